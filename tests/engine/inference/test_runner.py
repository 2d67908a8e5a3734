"""Back-ends: ONNX Runtime and channels_last agree with eager torch; auto keeps one that agrees."""

from __future__ import annotations

import numpy as np
import torch

from engine.inference.runner import OnnxRunner, TorchRunner, make_runner
from engine.inference.spec import ModelSpec
from engine.models import create_model

SPEC = ModelSpec("mobile-unet-small", "v", ("background", "tumour"), None, tile=64)


def batch(n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mobile-unet-small", classes=2).eval()


def test_onnx_and_channels_last_agree_with_eager_torch():
    m = model()
    x = batch()
    ref = TorchRunner(m, SPEC)(x)
    assert ref.shape == (2, 1, 64, 64) and ref.dtype == np.float32
    assert np.abs(OnnxRunner(m, SPEC, 64)(x) - ref).max() < 1e-5
    assert np.abs(TorchRunner(m, SPEC, channels_last=True)(x) - ref).max() < 1e-5
    # the probability head normalises like training did: same as normalising by hand
    norm = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(SPEC.mean).view(1, 3, 1, 1)
            ) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        by_hand = torch.softmax(m(norm), 1)[:, 1:].numpy()
    assert np.abs(by_hand - ref).max() < 1e-5


def test_auto_picks_an_agreeing_backend_and_never_reduced_precision_on_cpu():
    m = model()
    runner = make_runner(m, SPEC, 64, backend="auto", device="cpu", batch_size=2)
    x = batch()
    assert np.abs(runner(x) - TorchRunner(m, SPEC)(x)).max() < 1e-4
    assert runner.name in ("torch-eager", "torch-channels_last", "onnxruntime")
    assert TorchRunner(m, SPEC, amp=True).amp is False  # no autocast on the CPU


def test_the_exported_graph_and_the_choice_are_remembered_per_model_hash(tmp_path):
    from engine.inference.runner import model_hash

    m = model()
    first = make_runner(m, SPEC, 64, backend="auto", device="cpu", batch_size=2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.choice"))) == 1
    assert (tmp_path / f"{model_hash(m)[:20]}.onnx").is_file()  # one graph per model, any window
    again = make_runner(m, SPEC, 64, backend="auto", device="cpu", batch_size=2, cache_dir=tmp_path)
    assert again.name == first.name
    onnx = OnnxRunner(m, SPEC, 96, tmp_path)  # loads the stored graph, at another window size
    assert np.abs(onnx(batch(1, 96)) - TorchRunner(m, SPEC)(batch(1, 96))).max() < 1e-5
