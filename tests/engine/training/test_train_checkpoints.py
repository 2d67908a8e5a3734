from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from engine.models import create_model
from engine.training.checkpoints import CheckpointError, load_model, read_safetensors, save_model


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = create_model("mobile-unet-small", classes=3)
    model(torch.randn(2, 3, 32, 32))  # move BN running stats off their defaults
    out = tmp_path / "s.safetensors"
    save_model(out, model, {"model": model.config, "classes": ["a", "b", "c"], "metrics": {"miou": 0.5}})
    loaded, meta = load_model(out)
    assert meta["classes"] == ["a", "b", "c"] and meta["model"]["name"] == "mobile-unet-small"
    assert json.loads(out.with_suffix(".json").read_text()) == meta
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]  # no temp files left


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_files_are_refused(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "evil.safetensors"
    state = create_model("mobile-unet-small").state_dict()
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickles"):
        load_model(path)
    with pytest.raises(CheckpointError, match="pickles"):
        read_safetensors(path)


def test_a_header_length_whose_low_byte_looks_like_a_pickle_opcode_loads(tmp_path: Path) -> None:
    """The header length's first byte is 0x80 for one checkpoint in 256 (e.g. a 39 808-byte card):
    it was refused as a pickle."""
    import struct

    model = create_model("mobile-unet-small")
    out = tmp_path / "s.safetensors"
    for pad in range(256):
        save_model(out, model, {"model": model.config, "pad": "x" * pad})
        if out.read_bytes()[:1] == b"\x80":
            break
    head = out.read_bytes()[:9]
    assert head[:1] == b"\x80" and head[8:9] == b"{", struct.unpack("<Q", head[:8])
    loaded, meta = load_model(out)
    assert meta["pad"] == "x" * pad


def test_wrong_name_and_missing_file(tmp_path: Path) -> None:
    model = create_model("mobile-unet-small")
    with pytest.raises(CheckpointError, match=".safetensors"):
        save_model(tmp_path / "m.pt", model, {"model": model.config})
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "none.safetensors")
