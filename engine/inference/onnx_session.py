"""ONNX Runtime sessions, and the remembered back-end of a model file, without importing torch.

A run whose back-end was measured before (ONNX Runtime, float32 or int8) needs neither torch nor
the model's weights: only the cached graph. :func:`remembered_session` finds it from the model
*file*: an alias record (``file-<sha256 of the file>.json``, written by
:func:`engine.inference.runner.remember_file` once a back-end is chosen or used for that file)
names the model's weight hash, which keys the choice and the graph as in
:mod:`engine.inference.runner`. Anything missing or unreadable (no alias, no choice, a torch
back-end, a deleted graph, an int8 graph whose verdict is gone) returns None, and the caller takes
the torch path, which measures or rebuilds what is missing. Skipping torch saves its import
(about 1.5 s) and its memory on every warm CLI run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from engine.inference.spec import file_digest
from engine.model_card import inside

log = logging.getLogger(__name__)

INT8 = "onnxruntime-int8"
FLOAT = "onnxruntime"
MAX_MIOU_DROP = 0.005  # largest test-split mIoU loss accepted for a reduced-precision variant


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """CPU model and thread count, as a short file-name-safe key."""
    cpu = hashlib.sha1(cpu_model().encode()).hexdigest()[:8]
    return f"t{cpu_threads()}-cpu{cpu}"


def backend_cache_dir() -> Path:
    """Where back-end choices and ONNX graphs are remembered: the user cache the app uses too
    (``<user data>/predictions/backends``), shared by every run and every ``--out`` folder."""
    from engine.slide.sample import user_data_dir

    return user_data_dir() / "predictions" / "backends"


# -- file names in the back-end cache, by the model's weight hash ----------------------------------

def choice_name(weights: str, window: int, batch_size: int) -> str:
    return f"{weights[:20]}-w{window}-b{batch_size}-{machine_key()}.choice"


def graph_name(weights: str, int8: bool = False) -> str:
    return f"{weights[:20]}{'-int8' if int8 else ''}.onnx"


def verdict_name(weights: str) -> str:
    return f"{weights[:20]}-int8.verdict.json"


def alias_name(file_sha256: str) -> str:
    return f"file-{file_sha256[:32]}.json"


def file_sha256(path: str | Path) -> str:
    return file_digest(Path(path), 64)


def verdict_accepted(weights: str, cache_dir: Path) -> bool:
    """Whether the int8 graph's accuracy verdict for these weights is on record and accepted."""
    try:
        v = json.loads(inside(cache_dir, verdict_name(weights)).read_text())
    except (OSError, ValueError):
        return False
    return bool(v.get("accepted")) and float(v.get("miou_drop", 1.0)) <= MAX_MIOU_DROP


# -- the session ------------------------------------------------------------------------------------

class OnnxSession:
    """An ONNX graph (uint8 NHWC windows in, foreground probabilities out) run by ONNX Runtime on
    the CPU, on every core this process may use (``threads``), without its CPU arena; ``burst``: a
    session for occasional large calls (:meth:`with_threads`)."""

    remembered = False

    def __init__(self, graph: bytes, int8: bool = False, threads: int | None = None,
                 burst: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: no notes on unused initialisers
        # no arena: activations are handed back after each batch (peak RSS of a 768 px batch of 4:
        # 0.80 GB instead of 1.24 GB, at the same speed within noise)
        opts.enable_cpu_mem_arena = burst
        self.run_options: Any = None
        if burst:
            # one large call now and then (a field of 1984 × 1152): pool threads sleep between
            # calls, and the arena, emptied after each call, makes a first call at a new size
            # 0.98 s instead of 1.47 s (2 cores) for about 0.3 GB more peak memory during it
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self.name = INT8 if int8 else FLOAT
        self.graph, self.int8 = graph, int8

    def with_threads(self, threads: int) -> OnnxSession:
        """Another session of the same graph on ``threads`` threads for an occasional large call
        beside this one (the app's preview of the field; see ``burst``). The pool's threads are
        made now, with the calling thread's CPU affinity and priority."""
        return OnnxSession(self.graph, self.int8, threads=threads, burst=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"rgb": np.ascontiguousarray(batch, dtype=np.uint8)},
                                self.run_options)[0]


def no_gpu_visible() -> bool:
    """True where no CUDA or ROCm device node exists: ``--device auto`` means the CPU there, so the
    CPU's remembered back-end applies without asking torch."""
    return not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def remembered_session(model_file: str | Path, window: int, batch_size: int,
                       cache_dir: Path) -> OnnxSession | None:
    """The ONNX Runtime session of the back-end remembered for this model file, machine, window and
    batch, when that back-end is ONNX Runtime and its graph is cached; else None."""
    try:
        alias = json.loads(inside(cache_dir, alias_name(file_sha256(model_file))).read_text())
        weights = str(alias["weights_sha256"])
        choice = json.loads(inside(cache_dir, choice_name(weights, window, batch_size)).read_text())
        name = choice.get("backend")
        if name not in (FLOAT, INT8):
            return None
        int8 = name == INT8
        if int8 and not verdict_accepted(weights, cache_dir):
            return None
        graph = inside(cache_dir, graph_name(weights, int8)).read_bytes()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        session = OnnxSession(graph, int8)
    except Exception as exc:  # noqa: BLE001 - no onnxruntime, a damaged graph: the torch path
        log.warning("remembered ONNX graph unusable (%s): the model is loaded", exc)
        return None
    session.remembered = True
    return session
