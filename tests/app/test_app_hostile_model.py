"""Hostile model files in the GUI (issue 13): choosing one in the Model panel or importing it in the
Models dock shows one line naming the file and the card's field, never a traceback; the active
model, the registry and a folder the card names are left as they were."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as st_save

from app_students import open_registry, student


def _hostile(path: Path, **changes) -> Path:
    model = student(0)
    card = {"model": model.config, "classes": ["background", "tumour"], "input": {"mpp": 2.0, "tile": 256}}
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = card
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_bytes(st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                             metadata={"cocopath": json.dumps(card)}))
    return path


def test_a_hostile_model_is_refused_in_one_line_when_chosen_or_imported(qtbot, window, small_svs,
                                                                          tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    files = {
        "version": _hostile(tmp_path / "version.safetensors", version=f"../../../../{victim.name}"),
        "input.mpp": _hostile(tmp_path / "mpp.safetensors", input__mpp="fast"),
        "input": _hostile(tmp_path / "input.safetensors", input=[2.0, 256]),
        "model.encoder_weights": _hostile(tmp_path / "enc.safetensors",
                                          model__encoder_weights=str(victim / "precious.txt")),
    }
    reg = open_registry(qtbot, window, small_svs)
    pa, ta = window.predictions, window.training
    before = pa.spec
    for field, path in files.items():
        window.last_error = ""
        assert not pa.load_model(str(path))
        text = window.last_error
        assert text.startswith(f"{path}: model card: {field} ") and "\n" not in text, text
        assert pa.spec is before
        window.last_error = ""
        assert ta.versions.import_model(path) is None
        text = window.last_error
        assert text.startswith(f"{path}: model card: {field} ") and "\n" not in text, text
    assert reg.versions() == [] or all(v.note.startswith("the default") for v in reg.versions())
    assert (victim / "precious.txt").read_text() == "keep me"
