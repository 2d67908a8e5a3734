"""Network back-ends for tiled inference: torch (eager or channels_last, AMP on CUDA) and ONNX Runtime.

Every back-end takes a batch of windows as (B, N, N, 3) uint8 RGB and returns the foreground-class
probabilities (B, C - 1, N, N) float32: normalisation and softmax are part of the graph
(:class:`ProbabilityHead`), so each back-end does the same work and ONNX Runtime gets all of it.
On the CPU, ``backend="auto"`` uses the back-end chosen for this model on this machine: the choice
is measured once (:func:`measure_backend`: the candidates on one window of the run's size, the
fastest whose outputs agree with eager torch within ``AGREE_TOL``) and remembered in the user cache
(:func:`backend_cache_dir`), keyed by the model's content hash (:func:`model_hash`, so a changed
model is measured again), the CPU model and thread count, the window and the batch size. The ONNX
graph is exported once per model hash, with free batch and spatial sizes. With ``measure=False`` a
run never waits on a trial: it takes the remembered choice, else :func:`provisional_runner` (ONNX
Runtime unmeasured, else eager torch) until one is measured. :func:`remember_file` notes which
weights a model file holds, so that a later CLI run of that file finds a remembered ONNX Runtime
back-end without torch (:mod:`engine.inference.onnx_session`).
The int8 graph (onnxruntime's static quantiser) is a candidate only where its accuracy verdict
(:mod:`engine.inference.precision`: test-split mIoU within ``MAX_MIOU_DROP`` of float32) is on
record for the model hash. bfloat16 is never used on the CPU (about 10× slower there).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from engine.errors import CocoPathError
from engine.inference.onnx_session import (INT8, OnnxSession, alias_name, backend_cache_dir, choice_name,
                                           cpu_model, cpu_threads, graph_name, verdict_accepted, verdict_name)
from engine.inference.spec import ModelSpec
from engine.model_card import inside

log = logging.getLogger(__name__)

AGREE_TOL = 1e-4  # largest probability difference accepted between a back-end and eager torch
QUANT_TOL = 0.05  # a quantised graph further than this (mean) from eager torch on the probe is broken
BACKENDS = ("auto", "torch", "channels_last", "onnx", "onnx-int8")


class Runner(Protocol):
    name: str
    #: True when the back-end is the measured choice on record (or was given explicitly): no
    #: trial is due; False for an unmeasured one (``measure=False`` before any trial).
    remembered: bool

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


def configure_cpu_threads() -> int:
    """Let torch use every core this process may run on; returns the count."""
    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class TorchRunner:
    """torch in inference mode; ``channels_last`` and AMP (float16) on CUDA only where asked."""

    remembered = False

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


class OnnxRunner(OnnxSession):
    """The same graph exported to ONNX and run by ONNX Runtime on the CPU; ``int8``: the graph
    quantised statically (int8 weights and activations, see :func:`onnx_graph`)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, window: int,
                 cache_dir: Path | None = None, *, int8: bool = False) -> None:
        super().__init__(onnx_graph(model, spec, cache_dir, int8=int8), int8)


#: The size the graph is traced at (batch, height and width stay free): small, so exporting is
#: cheap in time and memory whatever window a run uses.
EXPORT_SIZE = 128


def export_onnx(model: nn.Module, spec: ModelSpec, window: int = EXPORT_SIZE) -> bytes:
    """The probability head of ``model`` as an ONNX graph (uint8 NHWC in; any batch, any height and
    width that the network's stride divides)."""
    head = ProbabilityHead(model, spec).eval()
    buf = io.BytesIO()
    x = torch.zeros(1, window, window, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (x,), buf, dynamo=False, input_names=["rgb"],
                          output_names=["probs"], opset_version=17,
                          dynamic_axes={"rgb": {0: "batch", 1: "height", 2: "width"},
                                        "probs": {0: "batch", 2: "height", 3: "width"}})
    return buf.getvalue()


def _store(file: Path, data: bytes) -> None:
    """Write ``data`` to ``file`` atomically (temp file + rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def int8_graph_file(model: nn.Module, cache_dir: Path) -> Path:
    return inside(cache_dir, graph_name(model_hash(model), int8=True))


def onnx_graph(model: nn.Module, spec: ModelSpec, cache_dir: Path | None = None, *,
               int8: bool = False) -> bytes:
    """The model's float32 ONNX graph, exported once per model hash into ``cache_dir``; ``int8``:
    its statically quantised graph, which only :func:`engine.inference.precision.make_int8_graph`
    makes (it is calibrated on the model's training images and comes with an accuracy verdict)."""
    if int8:
        file = int8_graph_file(model, cache_dir) if cache_dir else None
        if file is None or not file.is_file():
            raise CocoPathError("no int8 graph for this model here: `cocopath-engine bench infer "
                                "--precision` makes one (it needs the model's training data)")
        return file.read_bytes()
    file = inside(cache_dir, graph_name(model_hash(model))) if cache_dir else None
    if file is not None and file.is_file():
        return file.read_bytes()
    graph = export_onnx(model, spec)
    if file is not None:
        _store(file, graph)
    return graph


# -- what the choice is keyed by ------------------------------------------------------------------

_HASHES: dict[int, tuple[tuple, str]] = {}


def model_hash(model: nn.Module) -> str:
    """sha256 of the model's state dict (names, dtypes, shapes and bytes of every tensor): the
    identity of its weights, whatever file they came from. Remembered per model object while its
    tensors are unchanged (their versions and data pointers)."""
    sd = model.state_dict()
    stamp = tuple((k, v._version, v.data_ptr()) for k, v in sd.items())
    hit = _HASHES.get(id(model))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    _HASHES[id(model)] = (stamp, digest)
    return digest


def choice_file(model: nn.Module, window: int, batch_size: int, cache_dir: Path) -> Path:
    return inside(cache_dir, choice_name(model_hash(model), window, batch_size))


def verdict_file(model: nn.Module, cache_dir: Path) -> Path:
    return inside(cache_dir, verdict_name(model_hash(model)))


def int8_allowed(model: nn.Module, cache_dir: Path | None) -> bool:
    """Whether the int8 graph's accuracy verdict for this model is on record and accepted."""
    return cache_dir is not None and verdict_accepted(model_hash(model), cache_dir)


def remember_file(model_file: str | Path, model: nn.Module, cache_dir: Path) -> None:
    """Record which weights ``model_file`` holds (its alias in ``cache_dir``), so that a later run
    of the same file finds its remembered ONNX back-end without torch
    (:func:`~engine.inference.onnx_session.remembered_session`)."""
    from engine.inference.onnx_session import file_sha256

    record = {"weights_sha256": model_hash(model), "file": str(Path(model_file).name)}
    file = inside(cache_dir, alias_name(file_sha256(model_file)))
    try:
        if json.loads(file.read_text()) == record:
            return
    except (OSError, ValueError):
        pass
    _store(file, json.dumps(record).encode())


def note_file(model_file: str | Path, model: nn.Module, cache_dir: Path) -> None:
    """:func:`remember_file`, as the shortcut it is: a failure (a full disk) is logged, and the run
    that asked goes on."""
    try:
        remember_file(model_file, model, cache_dir)
    except OSError as exc:
        log.warning("%s: could not note which weights %s holds (%s)", cache_dir, model_file, exc)


def remembered_backend(model: nn.Module, window: int, batch_size: int = 4,
                       cache_dir: Path | None = None) -> str | None:
    """The back-end name measured before for this model, machine, window and batch, else None."""
    cache_dir = backend_cache_dir() if cache_dir is None else cache_dir
    try:
        data = json.loads(choice_file(model, window, batch_size, cache_dir).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("backend") if isinstance(data, dict) else None
    return name if name in _BY_NAME else None


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


def _build(name: str, model: nn.Module, spec: ModelSpec, window: int, cache_dir: Path | None) -> Runner:
    if name in ("torch-eager", "torch"):
        return TorchRunner(model, spec)
    if name in ("torch-channels_last", "channels_last"):
        return TorchRunner(model, spec, channels_last=True)
    if name in ("onnxruntime", "onnx"):
        return OnnxRunner(model, spec, window, cache_dir)
    if name in (INT8, "onnx-int8"):
        return OnnxRunner(model, spec, window, cache_dir, int8=True)
    raise ValueError(f"unknown back-end {name!r}")


_BY_NAME = ("torch-eager", "torch-channels_last", "onnxruntime", INT8)


def make_runner(model: nn.Module, spec: ModelSpec, window: int, *, backend: str = "auto",
                device: str = "auto", batch_size: int = 4, cache_dir: Path | None = None,
                measure: bool = True) -> Runner:
    """The back-end to run ``model`` with on windows of ``window`` px in batches of ``batch_size``.

    ``backend="auto"`` on the CPU: the choice remembered in ``cache_dir`` for this model hash,
    machine, window and batch; when there is none, ``measure=True`` measures it now
    (:func:`measure_backend`, a few seconds) and ``measure=False`` returns at once
    (:func:`provisional_runner`: ONNX Runtime unmeasured, else eager torch).
    ``cache_dir=None`` remembers nothing (every ``auto`` call measures)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-end {backend!r}; valid: {', '.join(BACKENDS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.eval()
    if device != "cpu":
        if backend.startswith("onnx"):
            raise ValueError("the onnx back-ends run on the CPU only")
        return TorchRunner(model, spec, device, channels_last=backend != "torch", amp=True)
    if backend != "auto":
        return _remembered(_build(backend, model, spec, window, cache_dir))
    name = remembered_backend(model, window, batch_size, cache_dir) if cache_dir else None
    if name == INT8 and not int8_allowed(model, cache_dir):  # its accuracy verdict is gone
        log.warning("the remembered int8 back-end has no accepted accuracy verdict now: chosen again")
        name = None
    if name is not None:
        try:
            return _remembered(_build(name, model, spec, window, cache_dir))
        except Exception as exc:  # the remembered back-end is gone (onnxruntime removed): again
            log.warning("remembered back-end %s unusable (%s)", name, exc)
    if not measure:
        return provisional_runner(model, spec, window, cache_dir)
    return measure_backend(model, spec, window, batch_size=batch_size, cache_dir=cache_dir)


def _remembered(runner: Runner) -> Runner:
    runner.remembered = True
    return runner


def provisional_runner(model: nn.Module, spec: ModelSpec, window: int,
                       cache_dir: Path | None = None) -> Runner:
    """A runner without a trial, for a run that must not wait: ONNX Runtime (float32) when its
    graph exports (about 1 s, then cached by model hash) and agrees with eager torch on one small
    window, else eager torch. Not measured: ONNX Runtime is the usual winner on a CPU, and the
    measured choice replaces it once :func:`measure_backend` has run."""
    eager = TorchRunner(model, spec)
    try:
        onnx = OnnxRunner(model, spec, window, cache_dir)
        probe = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        if float(np.abs(onnx(probe) - eager(probe)).max()) <= AGREE_TOL:
            log.info("no back-end measured yet for this model here: onnxruntime for now")
            return onnx
    except Exception as exc:  # noqa: BLE001 - no onnxruntime, or the graph does not export
        if isinstance(exc, OSError):
            raise  # the cache cannot be written: the caller says so
        log.warning("ONNX Runtime unavailable (%s)", exc)
    log.info("no back-end measured yet for this model here: eager torch for now")
    return eager


def measure_backend(model: nn.Module, spec: ModelSpec, window: int, *, batch_size: int = 4,
                    cache_dir: Path | None = None) -> Runner:
    """Measure the CPU back-ends for this model, window and batch, remember the fastest that agrees
    with eager torch in ``cache_dir`` (see :func:`make_runner`) and return it. Meant to run once per
    model and machine, e.g. in the background after the first run. Cheap (a few seconds): one
    window of the run's size; each candidate's first call checks that it agrees (and warms it up),
    then two interleaved timed rounds, where eager torch's reference call stands for its first
    round and a candidate over 1.5× the best after the first round is dropped."""
    t0 = time.perf_counter()
    model = model.eval()
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (1, window, window, 3), dtype=np.uint8)
    eager = TorchRunner(model, spec)
    t = time.perf_counter()
    ref = eager(probe)
    best_t = {eager.name: time.perf_counter() - t}  # cold: if anything, too slow
    candidates: list[Runner] = [eager, TorchRunner(model, spec, channels_last=True)]
    try:
        candidates.append(OnnxRunner(model, spec, window, cache_dir))
    except OSError:
        raise  # the graph cannot be stored (disk full): the caller says so
    except Exception as exc:  # no onnxruntime, or an operator it cannot export: torch it is
        log.warning("ONNX Runtime unavailable (%s): torch is used", exc)
    if len(candidates) == 3 and int8_allowed(model, cache_dir):
        try:
            candidates.append(OnnxRunner(model, spec, window, cache_dir, int8=True))
        except Exception as exc:  # noqa: BLE001 - the int8 graph is gone: float32 it is
            log.warning("int8 graph unusable (%s)", exc)
    usable = [eager]
    for cand in candidates[1:]:
        out = cand(probe)  # also the warm-up call
        # float32 back-ends: the same probabilities; int8: close (its test-split mIoU is on record)
        diff = float(np.abs(out - ref).mean() if cand.name == INT8 else np.abs(out - ref).max())
        tol = QUANT_TOL if cand.name == INT8 else AGREE_TOL
        if diff > tol:
            log.warning("%s disagrees with eager torch by %.2g: not used", cand.name, diff)
        else:
            usable.append(cand)
            best_t[cand.name] = float("inf")
    for rnd in range(2):  # interleaved rounds: a burst of other work hits every candidate alike
        for cand in usable:
            if rnd == 0 and cand is eager:
                continue  # its reference call was its first round
            t = time.perf_counter()
            cand(probe)
            best_t[cand.name] = min(best_t[cand.name], time.perf_counter() - t)
        if rnd == 0:
            fastest = min(best_t[c.name] for c in usable)
            usable = [c for c in usable if best_t[c.name] <= 1.5 * fastest]
    best = min(usable, key=lambda c: best_t[c.name])
    ms = {k: 1e3 * v / len(probe) for k, v in best_t.items() if math.isfinite(v)}
    log.info("inference back-end: %s (%s ms/window)", best.name,
             ", ".join(f"{k} {v:.0f}" for k, v in ms.items()))
    if cache_dir is not None:
        record = {"backend": best.name, "ms_per_window": ms, "model_sha256": model_hash(model),
                  "cpu": cpu_model(), "threads": cpu_threads(), "window": window,
                  "batch_size": batch_size, "trial_s": time.perf_counter() - t0}
        _store(choice_file(model, window, batch_size, cache_dir), json.dumps(record, indent=1).encode())
        best.remembered = True
    del candidates, usable
    from engine.oom import free_memory

    free_memory()  # the losers' memory back to the system before the run (malloc_trim)
    return best
