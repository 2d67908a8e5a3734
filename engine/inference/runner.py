"""Network back-ends for tiled inference: torch (eager or channels_last, AMP on CUDA) and ONNX Runtime.

Every back-end takes a batch of windows as (B, N, N, 3) uint8 RGB and returns the foreground-class
probabilities (B, C - 1, N, N) float32: normalisation and softmax are part of the graph
(:class:`ProbabilityHead`), so each back-end does the same work and ONNX Runtime gets all of it.
On the CPU, :func:`make_runner` with ``backend="auto"`` measures the candidates on the model's own
input size and keeps the fastest whose outputs agree with eager torch (``AGREE_TOL``); torch stays
the fallback. bfloat16 is never used on the CPU (about 10× slower there).
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from engine.inference.spec import ModelSpec
from engine.model_card import inside

log = logging.getLogger(__name__)

AGREE_TOL = 1e-4  # largest probability difference accepted between a back-end and eager torch
BACKENDS = ("auto", "torch", "channels_last", "onnx")


class Runner(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class ProbabilityHead(nn.Module):
    """uint8 NHWC RGB → normalised NCHW float → model → softmax → foreground probabilities."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std  # channels_last strides
        return torch.softmax(self.model(x).float(), dim=1)[:, 1:]


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_cpu_threads() -> int:
    """Let torch use every core this process may run on; returns the count."""
    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class TorchRunner:
    """torch in inference mode; ``channels_last`` and AMP (float16) on CUDA only where asked."""

    def __init__(self, model: nn.Module, spec: ModelSpec, device: str = "cpu",
                 channels_last: bool = False, amp: bool = False) -> None:
        self.device = torch.device(device)
        if self.device.type == "cpu":
            configure_cpu_threads()
            amp = False  # never bf16 / reduced precision on the CPU
        self.head = ProbabilityHead(model, spec).eval().to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.head = self.head.to(memory_format=torch.channels_last)
        self.amp = amp
        self.name = "torch-" + ("channels_last" if channels_last else "eager") + \
            ("-amp" if amp else "") + ("" if self.device.type == "cpu" else f"-{self.device.type}")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.amp):
            if not self.channels_last:  # NCHW-contiguous input for the plain eager path
                x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            y = self.head(x)
        return y.float().cpu().numpy()


class OnnxRunner:
    """The same graph exported to ONNX and run by ONNX Runtime on the CPU."""

    def __init__(self, model: nn.Module, spec: ModelSpec, window: int,
                 cache_dir: Path | None = None) -> None:
        import onnxruntime as ort

        file = inside(cache_dir, f"{spec.version}-{window}.onnx") if cache_dir else None
        if file is not None and file.is_file():
            graph = file.read_bytes()  # exported before for this model version and input size
        else:
            graph = export_onnx(model, spec, window)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
                tmp.write_bytes(graph)
                os.replace(tmp, file)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self.name = "onnxruntime"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"rgb": np.ascontiguousarray(batch, dtype=np.uint8)})[0]


def export_onnx(model: nn.Module, spec: ModelSpec, window: int) -> bytes:
    """The probability head of ``model`` as an ONNX graph (uint8 NHWC in, any batch size)."""
    head = ProbabilityHead(model, spec).eval()
    buf = io.BytesIO()
    x = torch.zeros(1, window, window, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (x,), buf, dynamo=False, input_names=["rgb"],
                          output_names=["probs"], opset_version=17,
                          dynamic_axes={"rgb": {0: "batch"}, "probs": {0: "batch"}})
    return buf.getvalue()


def time_runner(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, repeats: int = 3
                ) -> float:
    """Fastest of ``repeats`` timed calls of ``run(batch)`` after one warm-up call (seconds); the
    minimum, not the mean: other work on a shared CPU only ever adds time."""
    run(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t)
    return float(min(times))


def make_runner(model: nn.Module, spec: ModelSpec, window: int, *, backend: str = "auto",
                device: str = "auto", batch_size: int = 4, cache_dir: Path | None = None) -> Runner:
    """The back-end to run ``model`` with; ``auto`` measures on the CPU and keeps the fastest.

    With ``cache_dir``, the exported ONNX graph and the measured choice are kept there per model
    version, input size, batch size and thread count, so the next start skips both.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-end {backend!r}; valid: {', '.join(BACKENDS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.eval()
    if device != "cpu":
        if backend == "onnx":
            raise ValueError("the onnx back-end runs on the CPU only")
        return TorchRunner(model, spec, device, channels_last=backend != "torch", amp=True)
    if backend == "torch":
        return TorchRunner(model, spec)
    if backend == "channels_last":
        return TorchRunner(model, spec, channels_last=True)
    if backend == "onnx":
        return OnnxRunner(model, spec, window, cache_dir)
    choice = inside(cache_dir, f"{spec.version}-{window}-b{batch_size}-t{cpu_threads()}.choice") \
        if cache_dir else None
    if choice is not None and choice.is_file():
        name = choice.read_text().strip()
        try:
            if name in ("torch-eager", "torch-channels_last"):
                return TorchRunner(model, spec, channels_last=name == "torch-channels_last")
            if name == "onnxruntime":
                return OnnxRunner(model, spec, window, cache_dir)
        except Exception as exc:  # the remembered back-end is gone: measure again
            log.warning("remembered back-end %s unusable (%s)", name, exc)
    best = _fastest(model, spec, window, batch_size, cache_dir)
    if choice is not None:
        choice.parent.mkdir(parents=True, exist_ok=True)
        choice.write_text(best.name)
    return best


def _fastest(model: nn.Module, spec: ModelSpec, window: int, batch_size: int,
             cache_dir: Path | None = None) -> Runner:
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (batch_size, window, window, 3), dtype=np.uint8)
    eager = TorchRunner(model, spec)
    ref = eager(probe)
    candidates: list[Runner] = [eager, TorchRunner(model, spec, channels_last=True)]
    try:
        candidates.append(OnnxRunner(model, spec, window, cache_dir))
    except Exception as exc:  # no onnxruntime, or an operator it cannot export: torch it is
        log.warning("ONNX Runtime unavailable (%s): torch is used", exc)
    usable = []
    for cand in candidates:
        diff = float(np.abs(cand(probe) - ref).max())  # also the warm-up call
        if diff > AGREE_TOL:
            log.warning("%s disagrees with eager torch by %.2g: not used", cand.name, diff)
        else:
            usable.append(cand)
    best_t = {c.name: float("inf") for c in usable}
    for _ in range(3):  # interleaved rounds: a burst of other work hits every candidate alike
        for cand in usable:
            t = time.perf_counter()
            cand(probe)
            best_t[cand.name] = min(best_t[cand.name], time.perf_counter() - t)
    for cand in usable:
        log.info("back-end %s: %.1f ms/window", cand.name, 1e3 * best_t[cand.name] / len(probe))
    best = min(usable, key=lambda c: best_t[c.name])
    log.info("inference back-end: %s", best.name)
    return best
