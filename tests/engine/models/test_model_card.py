"""Model cards (:mod:`engine.model_card`): every field the engine reads is checked. Hostile cards and
safetensors headers, hand-made and fuzzed, end in a valid model or one CocoPathError line naming the
file, never another exception; names from a card never leave their folder."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from torch import nn

from engine.errors import CocoPathError
from engine.inference.spec import ModelError, ModelSpec, load_spec, spec_from_meta
from engine.model_card import (FORMAT, ModelCardError, UnsafePathError, check_card, inside,
                               is_plain_name, parse_card)
from engine.models import create_model, register_model
from engine.training.checkpoints import CheckpointError, load_model, read_safetensors, save_model

ROOT = Path(__file__).resolve().parents[3]
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # autouse env only
TINY_ARCH = "test-card-tiny"


class _Tiny(nn.Module):
    """A one-layer "segmentation network": fast enough to build thousands of times."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, classes, 1)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@register_model(TINY_ARCH)
def _tiny(classes: int = 2) -> nn.Module:  # type: ignore[return-value]
    return _Tiny(classes)


def valid_card() -> dict[str, Any]:
    """A card using every checked field, all valid."""
    return {
        "format": FORMAT, "name": "tiny-student", "version": "mobile-unet-small-v0001-0123456789ab",
        "role": "student",
        "model": {"name": "mobile-unet-small", "classes": 2, "decoder_channels": [16, 16, 16, 8, 8],
                  "norm": "bn"},
        "classes": ["background", "tumour"],
        "input": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB",
                  "scale": "0-255 → 0-1", "short_side": None, "mpp": 1.0, "tile": 256},
        "data": {"folders": ["ebhi-adenocarcinoma"], "group_regex": r"^(.*?)-\d+$", "negatives": [],
                 "split_seed": 0, "mask_mode": "binary", "train_cases": ["a"], "val_cases": ["b"],
                 "test_cases": ["c"], "balanced": True},
        "metrics": {"val": {"miou": 0.5}}, "registry": {"version": "v0001"},
    }


def with_value(card: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """A copy of ``card`` with the dotted ``field`` set to ``value`` (parents made objects)."""
    out = copy.deepcopy(card)
    *parents, last = field.split(".")
    node = out
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value
    return out


def one_line(exc: BaseException, source: str | Path) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith(f"{source}:"), text
    return text


# -- the shipped cards and the writers' cards pass ------------------------------------------------

@pytest.mark.parametrize("name", ["cocopath-student-tumour", "cocopath-teacher-tumour"])
def test_the_shipped_cards_pass_in_both_places(name: str) -> None:
    side = ROOT / "resources" / "models" / f"{name}.json"
    card = check_card(json.loads(side.read_text()), side)
    spec = load_spec(side.with_suffix(".safetensors"))  # the header's copy
    assert spec.classes == tuple(card["classes"]) and spec.mpp == card["input"]["mpp"]


def test_a_valid_card_with_every_field_passes() -> None:
    card = valid_card()
    assert check_card(card, "x.safetensors") is card
    spec = spec_from_meta(card, "unused", "x.safetensors")
    assert spec.version == card["version"] and spec.tile == 256 and spec.mpp == 1.0


# -- hostile and broken fields --------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
HOSTILE: list[tuple[str, Any, str]] = [
    ("input", [1, 2, 3], "input is a list of 3 items, not an object"),
    ("input.mean", [0.5], "input.mean is a list of 1 item: it needs 3 numbers"),
    ("input.mean", "imagenet", "input.mean is 'imagenet': it needs 3 numbers"),
    ("input.mean", [INF, 0, 0], "input.mean[0] is inf, not a finite number"),
    ("input.mean", [], "input.mean is a list of 0 items"),
    ("input.std", [0, 0, 0], "input.std[0] is 0: it must be 0.001 to 100"),
    ("input.std", [0.2, NAN, 0.2], "input.std[1] is nan, not a finite number"),
    ("input.std", [-1, 1, 1], "input.std[0] is -1"),
    ("input.mpp", "fast", "input.mpp is 'fast', not a number"),
    ("input.mpp", 1e-9, "input.mpp is 1e-09: it must be 0.05 to 100 µm/px"),
    ("input.mpp", 0, "input.mpp is 0: it must be 0.05 to 100"),
    ("input.mpp", -0.5, "input.mpp is -0.5"),
    ("input.mpp", NAN, "input.mpp is nan, not a finite number"),
    ("input.mpp", True, "input.mpp is true, not a number"),
    ("input.mpp", 10**400, "input.mpp is an integer of 401 digits"),
    ("input.tile", 2**20, "input.tile is 1048576: it must be 64 to 2048"),
    ("input.tile", 100, "input.tile is 100: it must be a multiple of 32"),
    ("input.tile", 512.0, "input.tile is 512.0, not an integer"),
    ("input.tile", "512", "input.tile is '512', not an integer"),
    ("input.tile", 0, "input.tile is 0"),
    ("input.short_side", -5, "input.short_side is -5"),
    ("input.channels", "BGR", "input.channels is 'BGR': CoCoPath feeds RGB"),
    ("model", "mobile-unet", "model is a string, not an object"),
    ("model", None, "model is null, not an object"),
    ("model.name", "../evil", "model.name is '../evil', not a CoCoPath architecture"),
    ("model.name", "resnet1000", "model.name is 'resnet1000', not a CoCoPath architecture"),
    ("model.name", ["mobile-unet"], "model.name is a list of 1 item"),
    ("model.decoder_channels", [2**20] * 5, "model.decoder_channels[0] is 1048576: it must be 1 to 1024"),
    ("model.decoder_channels", [16, 16, 16, 8], "model.decoder_channels is a list of 4 items: it needs 5"),
    ("model.decoder_channels", [16, 16, 16, 8, 0], "model.decoder_channels[4] is 0"),
    ("model.decoder_channels", [16, 16, 16, 8, 8.5], "model.decoder_channels[4] is 8.5, not an integer"),
    ("model.encoder_weights", "/etc/passwd", "model.encoder_weights names a file: a model card may not "
                                             "point at files"),
    ("model.encoder_weights", "missing.safetensors", "model.encoder_weights names a file"),
    ("model.norm", "layer", "model.norm is 'layer', not one of bn, gn"),
    ("model.classes", 1, "model.classes is 1: it must be 2 to 256"),
    ("model.classes", 10**100, "model.classes is an integer of 101 digits"),
    ("model.classes", 3, "classes lists 2 names and model.classes is 3: they do not fit together"),
    ("model.depth", 34, "model.depth is not a setting of mobile-unet-small"),
    ("classes", ["tumour"], "classes lists 1 names: it needs 2 to 256"),
    ("classes", ["a", "a"], "classes[1] repeats 'a': class names must be distinct"),
    ("classes", ["a", 3], "classes[1] is 3, not a class name"),
    ("classes", ["a", " "], "classes[1] is ' ', not a class name"),
    ("classes", ["a", "x\ny"], "classes[1] is 'x\\ny': a class name is at most 100 printable"),
    ("classes", "background,tumour", "classes is a string, not a list of class names"),
    ("classes", ["a"] + [f"c{i}" for i in range(300)], "classes lists 301 names"),
    ("version", "../../../victim", "version is '../../../victim': it must be a plain name"),
    ("version", "/tmp/victim", "version is '/tmp/victim': it must be a plain name"),
    ("version", "..", "version is '..': it must be a plain name"),
    ("version", ".", "version is '.'"),
    ("version", "a/b", "version is 'a/b'"),
    ("version", "a\\b", "version is 'a\\\\b'"),
    ("version", "CON", "version is 'CON'"),
    ("version", "v" * 65, "version is 'vvvv"),
    ("version", "v1.", "version is 'v1.'"),
    ("version", 7, "version is 7"),
    ("version", "x\x00y", "version is 'x\\x00y'"),
    ("version", "", "version is ''"),
    ("name", "../name", "name is '../name'"),
    ("format", "cocopath-model/99", "format is 'cocopath-model/99': this CoCoPath reads cocopath-model/1"),
    ("data", ["seg"], "data is a list of 1 item, not an object"),
    ("data.group_regex", "(", "data.group_regex is not a valid regular expression"),
    ("data.group_regex", "a" * 600, "data.group_regex is 'aaaa"),
    ("data.folders", "seg", "data.folders is a string, not a list of names"),
    ("data.train_cases", [1, 2], "data.train_cases[0] is 1, not a name"),
    ("data.split_seed", -1, "data.split_seed is -1"),
    ("metrics", [], "metrics is a list of 0 items, not an object"),
]


@pytest.mark.parametrize("field, value, message", HOSTILE, ids=[f"{f}={str(v)[:20]}" for f, v, _ in HOSTILE])
def test_a_hostile_field_is_refused_in_one_line_naming_it(field: str, value: Any, message: str) -> None:
    with pytest.raises(ModelCardError) as err:
        check_card(with_value(valid_card(), field, value), "/m/x.safetensors")
    text = one_line(err.value, "/m/x.safetensors")
    assert text.startswith("/m/x.safetensors: model card: ") and message in text, text


def test_a_decoder_too_large_for_its_window_is_refused() -> None:
    card = with_value(with_value(valid_card(), "model.decoder_channels", [1024] * 5), "input.tile", 512)
    with pytest.raises(ModelCardError, match=r"model.decoder_channels \[1024, 1024, 1024, 1024, 1024\] "
                                             r"with input.tile 512 would need about 2 GiB per window"):
        check_card(card, "m")
    check_card(with_value(card, "input.tile", 128), "m")  # the same decoder on smaller windows


@pytest.mark.parametrize("card, message", [
    ([], "model card is a list of 0 items, not a JSON object"),
    ("x", "model card is a string, not a JSON object"),
    (None, "model card is null"),
    ({}, "model card: model is missing"),
])
def test_a_card_that_is_not_an_object_is_refused(card: Any, message: str) -> None:
    with pytest.raises(ModelCardError, match=message):
        check_card(card, "c.json")


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"model": NaN}', "model is a number"),
])
def test_card_text_that_is_not_json_is_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(ModelCardError, match=message) as err:
        parse_card(text, "c.json")
    one_line(err.value, "c.json")


def test_optional_fields_may_be_absent_or_null() -> None:
    card = {"model": {"name": "mobile-unet"}}
    spec = spec_from_meta(check_card(card, "m"), "mobile-unet-0123", "m")
    assert spec.classes == ("background", "class 1") and spec.tile == 512 and spec.mpp is None
    nulls = {"model": {"name": "mobile-unet", "classes": None, "decoder_channels": None, "norm": None,
                       "encoder_weights": None},
             "classes": None, "version": None, "name": None, "input": {"mean": None, "std": None,
                                                                       "mpp": None, "tile": None},
             "data": None, "metrics": None}
    assert spec_from_meta(check_card(nulls, "m"), "v1", "m").version == "v1"


def test_a_model_registered_later_can_be_named_with_its_own_settings() -> None:
    assert check_card({"model": {"name": TINY_ARCH, "classes": 3}, "classes": ["a", "b", "c"]}, "m")
    with pytest.raises(ModelCardError, match="model.norm is not a setting of test-card-tiny"):
        check_card({"model": {"name": TINY_ARCH, "norm": "bn"}}, "m")


def test_model_spec_itself_refuses_a_version_that_is_a_path() -> None:
    for version in ("../x", "a/b", "..", ""):
        with pytest.raises(ModelError, match="not a plain name"):
            ModelSpec("m", version, ("background", "tumour"), 1.0)
    with pytest.raises(ModelError, match="std"):
        ModelSpec("m", "v", ("background", "tumour"), 1.0, std=(0.0, 1.0, 1.0))


# -- names and paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, plain", [
    ("mobile-unet-v0001-abc", True), ("v1", True), ("a.b_c-d", True), ("x" * 64, True),
    ("x" * 65, False), ("..", False), (".", False), (".hidden", False), ("a/b", False),
    ("a\\b", False), ("/abs", False), ("C:x", False), ("", False), ("a b", False), ("nul", False),
    ("LPT1.txt", False), ("ends.", False), ("é", False), (None, False), (7, False),
])
def test_plain_names(name: Any, plain: bool) -> None:
    assert is_plain_name(name) is plain


def test_inside_keeps_a_name_in_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    assert inside(folder, "v1-512.onnx") == folder / "v1-512.onnx"
    for name in ("../x", "..", ".", "", "/etc/passwd", "a/b", "a\\b", "x\0y", "C:evil", "a\nb"):
        with pytest.raises(UnsafePathError) as err:
            inside(folder, name)
        assert "\n" not in str(err.value)
    victim = tmp_path / "victim"
    victim.mkdir()
    (folder / "link").symlink_to(victim)  # a planted link leads elsewhere: refused
    with pytest.raises(UnsafePathError, match="leads outside"):
        inside(folder, "link")


def test_a_runner_never_writes_outside_its_cache_folder(tmp_path: Path) -> None:
    """Defence in depth: even a spec whose version slipped past the card check (here a stand-in
    object) cannot make the ONNX export or the back-end choice leave the cache folder: their files
    are named by the model's content hash, never by the card."""
    from types import SimpleNamespace

    from engine.inference.runner import OnnxRunner, make_runner

    spec = SimpleNamespace(version="../../../victim", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    cache = tmp_path / "out" / "cache" / "backends"
    model = create_model(TINY_ARCH)
    OnnxRunner(model, spec, 64, cache)  # type: ignore[arg-type]
    make_runner(model, spec, 64, backend="auto", device="cpu", cache_dir=cache)  # type: ignore[arg-type]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the graph and the choice are stored"
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in written), written
    assert not (cache / "../../../victim").resolve().exists()


# -- checkpoints: weights ---------------------------------------------------------------------------

def _tiny_file(path: Path, card: dict[str, Any] | None = None, **tensors: torch.Tensor) -> Path:
    model = create_model(TINY_ARCH)
    state = {**{k: v.detach().clone() for k, v in model.state_dict().items()}, **tensors}
    meta = card if card is not None else {"model": model.config, "classes": ["background", "tumour"],
                                          "input": {"mpp": 1.0, "tile": 64}}
    path.write_bytes(st_save(state, metadata={"cocopath": json.dumps(meta)}))
    return path


@pytest.mark.parametrize("case, message", [
    ("nan", "weight head.weight holds non-finite values"),
    ("inf", "weight head.bias holds non-finite values"),
    ("overflow", "output is not finite"),
    ("shape", "weights do not fit"),
])
def test_weights_that_cannot_give_a_meaningful_output_are_refused(tmp_path: Path, case: str,
                                                                  message: str) -> None:
    bad = {"nan": {"head.weight": torch.full((2, 3, 1, 1), math.nan)},
           "inf": {"head.bias": torch.tensor([math.inf, 0.0])},
           "overflow": {"head.weight": torch.full((2, 3, 1, 1), 3e38)},
           "shape": {"head.bias": torch.zeros(3)}}[case]
    path = _tiny_file(tmp_path / "m.safetensors", **bad)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    one_line(err.value, path)


def test_a_negative_batchnorm_variance_is_refused(tmp_path: Path) -> None:
    model = create_model("mobile-unet-small", classes=2, decoder_channels=(8, 8, 8, 8, 8))
    with torch.no_grad():
        model.head.weight.zero_()
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).running_var.fill_(-1.0)
    path = save_model(tmp_path / "m.safetensors", model, {"model": model.config})
    with pytest.raises(CheckpointError, match="running_var is negative"):
        load_model(path)


def test_a_card_pointing_at_encoder_weights_never_loads_them(tmp_path: Path, monkeypatch) -> None:
    import engine.models.registry as reg

    loaded: list[Any] = []
    monkeypatch.setattr(reg, "load_encoder_weights", lambda *a: loaded.append(a))
    target = _tiny_file(tmp_path / "other.safetensors")
    model = create_model("mobile-unet-small", classes=2, decoder_channels=(8, 8, 8, 8, 8))
    path = save_model(tmp_path / "m.safetensors", model,
                      {"model": {**model.config, "encoder_weights": str(target)}})
    for load in (load_model, load_spec):
        with pytest.raises(ModelCardError, match="may not point at files"):
            load(path)
    assert loaded == []


def test_a_missing_or_broken_encoder_weights_file_given_by_the_user_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CocoPathError, match="no such encoder weights file"):
        create_model("mobile-unet-small", encoder_weights=str(tmp_path / "none.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CocoPathError, match="not a readable safetensors file"):
        create_model("mobile-unet-small", encoder_weights=str(junk))


def test_an_unreadable_checkpoint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _tiny_file(tmp_path / "m.safetensors")
    if os.geteuid() != 0:
        path.chmod(0)  # a real refusal
    else:  # root reads any file (CI): the kernel's refusal is simulated where the file is opened
        import builtins

        real_open = builtins.open

        def refusing(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing)
    for load in (load_model, load_spec):
        with pytest.raises(CocoPathError, match="cannot be read"):
            load(path)


# -- fuzzing: card fields ---------------------------------------------------------------------------

FIELDS = ["format", "name", "version", "model", "model.name", "model.classes", "model.decoder_channels",
          "model.norm", "model.encoder_weights", "model.extra", "classes", "input", "input.mean",
          "input.std", "input.mpp", "input.tile", "input.short_side", "input.channels", "data",
          "data.folders", "data.group_regex", "data.split_seed", "data.mask_mode", "data.train_cases",
          "metrics", "registry", "imported_from"]
EDGES = [None, True, False, 0, -1, 1, 2, 3, 5, 31, 32, 63, 64, 65, 96, 2047, 2048, 2049, 2**20, 2**63,
         10**30, -(2**63), 0.0, -0.0, 1e-9, 0.05, 0.049, 100.0, 100.1, 1e308, -1e308, 5e-324,
         float("nan"), float("inf"), float("-inf"), "", ".", "..", "../x", "/etc/passwd", "CON", "RGB",
         "bn", "gn", "mobile-unet", "unet-resnet50", TINY_ARCH, "x" * 70, "a\nb", "(", "(a+)+$", [],
         {}, [0.5], [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [16, 16, 16, 8, 8], [1] * 5, [1024] * 5,
         ["a"], ["a", "a"], ["background", "tumour"], ["a", "b", "c"], [None, None, None],
         [float("nan")] * 3, [[1]] * 3, {"name": "mobile-unet"}]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(EDGES),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _check_outcome(card: Any, source: str = "/f/m.safetensors") -> str:
    """check_card + spec_from_meta: a valid spec, or ModelCardError/ModelError in one line."""
    try:
        checked = check_card(card, source)
    except ModelCardError as exc:
        one_line(exc, source)
        return "refused"
    spec = spec_from_meta(checked, "fallback-v1", source)  # a checked card always makes a spec
    assert is_plain_name(spec.version) and len(spec.classes) >= 2
    assert all(math.isfinite(v) for v in (*spec.mean, *spec.std)) and min(spec.std) > 0
    assert (spec.mpp is None or 0.05 <= spec.mpp <= 100) and 64 <= spec.tile <= 2048
    return "valid"


@settings(FUZZ, max_examples=900)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=3))
def test_fuzzed_card_fields_give_a_spec_or_one_line(changes: list[tuple[str, Any]]) -> None:
    card = valid_card()
    for field, value in changes:
        card = with_value(card, field, value)
    event(_check_outcome(card))


@settings(FUZZ, max_examples=200)
@given(JSON)
def test_fuzzed_whole_cards_give_a_spec_or_one_line(card: Any) -> None:
    event(_check_outcome(card))


# -- fuzzing: safetensors headers through the engine's load path ----------------------------------

@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file the fuzzed bytes are written to, example after example."""
    return tmp_path_factory.mktemp("fuzz") / "m.safetensors"


def _base_file() -> bytes:
    model = create_model(TINY_ARCH)
    card = {"model": model.config, "classes": ["background", "tumour"],
            "input": {"mpp": 1.0, "tile": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    return st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                   metadata={"cocopath": json.dumps(card)})


BASE = _base_file()
BASE_N = struct.unpack("<Q", BASE[:8])[0]


def _load_everything(path: Path, data: bytes) -> str:
    """The engine's load path on a file holding ``data``: the card (``load_spec``, no torch), the
    network (``load_model``) and the raw reader. Every outcome is a usable model or a
    CocoPathError in one line naming the file."""
    path.write_bytes(data)
    outcomes = []
    for load in (load_spec, load_model, read_safetensors):
        try:
            load(path)
        except CocoPathError as exc:
            one_line(exc, path)
            outcomes.append("refused")
        else:
            outcomes.append("loaded")
    return "/".join(outcomes)


@settings(FUZZ, max_examples=350)
@given(st.lists(st.tuples(st.integers(0, 8 + BASE_N + 40), st.integers(0, 255)), min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(0, len(BASE))))
def test_fuzzed_header_bytes_load_or_give_one_line(fuzz_file: Path, flips: list[tuple[int, int]],
                                                   cut: int | None) -> None:
    data = bytearray(BASE)
    for pos, byte in flips:
        data[min(pos, len(data) - 1)] = byte
    event(_load_everything(fuzz_file, bytes(data[:cut] if cut is not None else data)))


@settings(FUZZ, max_examples=150)
@given(st.one_of(st.integers(0, 2**64 - 1), st.integers(BASE_N - 16, BASE_N + 16)))
def test_fuzzed_header_lengths_load_or_give_one_line(fuzz_file: Path, n: int) -> None:
    event(_load_everything(fuzz_file, struct.pack("<Q", n) + BASE[8:]))


DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "XX",
                          "", 3, None])
SHAPES = st.one_of(st.lists(st.integers(-2, 5), max_size=4), st.just([2, 3, 1, 1]), st.just([2]),
                   st.lists(st.integers(0, 2**62), max_size=3), JSON)
OFFSETS = st.one_of(st.tuples(st.integers(-1, 40), st.integers(-1, 40)).map(list),
                    st.tuples(st.integers(0, 2**64), st.integers(0, 2**64)).map(list), JSON)
METADATA = st.one_of(
    st.builds(lambda changes: json.dumps(_apply(changes), allow_nan=True),
              st.lists(st.tuples(st.sampled_from(FIELDS), JSON), max_size=2)),
    st.text(max_size=30), JSON.map(lambda v: json.dumps(v, allow_nan=True)), JSON)


def _apply(changes: list[tuple[str, Any]]) -> dict[str, Any]:
    card = {"model": {"name": TINY_ARCH, "classes": 2}, "classes": ["background", "tumour"],
            "input": {"mpp": 1.0, "tile": 64}}
    for field, value in changes:
        card = with_value(card, field, value)
    return card


@settings(FUZZ, max_examples=350)
@given(st.dictionaries(st.sampled_from(["head.weight", "head.bias", "other", "__metadata__"]),
                       st.fixed_dictionaries({"dtype": DTYPES, "shape": SHAPES, "data_offsets": OFFSETS}),
                       max_size=3),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["cocopath", "x"]), METADATA, max_size=2), JSON),
       st.binary(max_size=48), st.booleans())
def test_fuzzed_header_structures_load_or_give_one_line(fuzz_file: Path, tensors: dict, metadata: Any,
                                                        body: bytes, pad: bool) -> None:
    header: dict[str, Any] = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header, allow_nan=True).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    event(_load_everything(fuzz_file, struct.pack("<Q", len(raw)) + raw + body))


@settings(FUZZ, max_examples=100)
@given(st.one_of(st.binary(max_size=64),
                st.sampled_from([b"\x80\x04garbage-pickle", b"PK\x03\x04zip", b"", b"{}",
                                 b"\x02\x00\x00\x00\x00\x00\x00\x00{}"])))
def test_random_bytes_load_or_give_one_line(fuzz_file: Path, data: bytes) -> None:
    event(_load_everything(fuzz_file, data))


@settings(FUZZ, max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=2))
def test_fuzzed_imports_add_a_version_or_give_one_line(fuzz_file: Path,
                                                       changes: list[tuple[str, Any]]) -> None:
    """``models import`` of a file with a fuzzed card: a whole version or RegistryError; never a
    temporary folder or a half version left behind."""
    from engine.finetune.registry import ModelRegistry, RegistryError

    model = create_model(TINY_ARCH)
    fuzz_file.write_bytes(st_save(dict(model.state_dict()),
                                  metadata={"cocopath": json.dumps(_apply(changes), allow_nan=True)}))
    root = fuzz_file.parent / "registry"
    shutil.rmtree(root, ignore_errors=True)
    reg = ModelRegistry(root)
    try:
        v = reg.import_model(fuzz_file)
    except RegistryError as exc:
        one_line(exc, fuzz_file)
        assert reg.versions() == []
        event("refused")
    else:
        assert [x.version for x in reg.versions()] == [v.version] and load_spec(v.path)
        event("imported")
    assert not list(root.glob(".tmp-*")) if root.exists() else True


@settings(FUZZ, max_examples=150)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(["F32", "F16", "BF16", "I32", "U8"]))
def test_fuzzed_weight_values_load_or_give_one_line(fuzz_file: Path, body: bytes, dtype: str) -> None:
    """A well-formed file whose 8 weights are random bytes (NaN, infinities, huge values, other
    dtypes): a finite usable network, or refused in one line."""
    header = json.loads(BASE[8:8 + BASE_N])
    size = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1}[dtype]
    offset = 0
    for key in sorted(k for k in header if k != "__metadata__"):
        n = math.prod(header[key]["shape"]) * size
        header[key].update(dtype=dtype, data_offsets=[offset, offset + n])
        offset += n
    raw = json.dumps(header).encode()
    outcome = _load_everything(fuzz_file, struct.pack("<Q", len(raw)) + raw + body[:offset])
    if outcome.split("/")[1] == "loaded":
        model, _ = load_model(fuzz_file)
        assert all(bool(torch.isfinite(p).all()) for p in model.state_dict().values())
    event(outcome)
