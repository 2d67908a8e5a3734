"""Reduced precision on the CPU: is it faster, and what does it cost in test-split mIoU?

``cocopath-engine bench infer --precision`` runs the shipped student as float32 ONNX Runtime (the
reference), int8 with onnxruntime's dynamic quantiser, int8 with its static quantiser (QDQ,
calibrated on training-split images: the graph the ``onnxruntime-int8`` back-end runs), and
bfloat16 / float16 torch autocast where
the CPU has the instructions, over the test split of the data the model's card names (the split the
distillation benchmark made, rebuilt from the card's case lists: :func:`engine.training.runs.data_from_card`).
A variant is usable only when its mIoU drop is at most :data:`~engine.inference.runner.MAX_MIOU_DROP`
and it is faster than float32 ONNX Runtime; the verdict for the int8 graph is remembered beside the
back-end choices (keyed by model hash), and only then does the back-end trial consider it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.inference.onnx_session import MAX_MIOU_DROP
from engine.inference.runner import (INT8, OnnxRunner, TorchRunner, _store,
                                     backend_cache_dir, cpu_model, cpu_threads, int8_graph_file,
                                     model_hash, onnx_graph, verdict_file)
from engine.inference.spec import ModelSpec

log = logging.getLogger(__name__)

Run = Callable[[np.ndarray], np.ndarray]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _pad32(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = (-h) % 32, (-w) % 32
    if not (ph or pw):
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")


def miou_of(run: Run, items: list[tuple[np.ndarray, np.ndarray]], classes: int) -> dict[str, float]:
    """mIoU and Dice (one confusion matrix over every pixel) of ``run`` (uint8 NHWC → foreground
    probabilities) on (image, mask) pairs, and the labels it gave (to compare variants)."""
    from engine.training.metrics import ConfusionMatrix

    cm = ConfusionMatrix(classes)
    for img, mask in items:
        h, w = mask.shape
        p = run(_pad32(img)[None])[0][:, :h, :w]  # (C - 1, h, w)
        bg = 1.0 - p.sum(axis=0, keepdims=True)
        cm.update(mask, np.concatenate([bg, p]).argmax(axis=0).astype(np.uint8))
    s = cm.summary()
    return {"miou": float(s["miou"]), "dice": float(s["dice"])}


def _dynamic_int8(graph: bytes) -> bytes:
    """``graph`` with int8 weights (onnxruntime's dynamic quantiser: ConvInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="cocopath-int8d-") as tmp:
        src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def make_int8_graph(model: Any, spec: ModelSpec, calib: list[np.ndarray], cache_dir: Path) -> Path:
    """Quantise the model's float32 graph statically on ``calib`` (uint8 HWC images, sides a
    multiple of 32) and store it where :class:`~engine.inference.runner.OnnxRunner` finds it."""
    file = int8_graph_file(model, cache_dir)
    _store(file, _static_int8(onnx_graph(model, spec, cache_dir), calib))
    return file


def _static_int8(graph: bytes, calib: list[np.ndarray]) -> bytes:
    """``graph`` quantised statically (QDQ, int8 weights and activations) on ``calib`` windows."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"rgb": x[None]}

    with tempfile.TemporaryDirectory(prefix="cocopath-int8s-") as tmp:
        src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "int8s.onnx"
        src.write_bytes(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _session(graph: bytes) -> Run:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    return lambda b: sess.run(None, {"rgb": np.ascontiguousarray(b, dtype=np.uint8)})[0]


def _autocast(model: Any, spec: ModelSpec, dtype: Any) -> Run:
    import torch

    eager = TorchRunner(model, spec)

    def run(b: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            return eager.head(x).float().numpy()
    return run


def precision_report(model: Any, spec: ModelSpec, meta: dict[str, Any], *, window: int = 768,
                     batch: int = 2, rounds: int = 3, calib_images: int = 32,
                     cache_dir: Path | None = None, remember: bool = True) -> dict[str, Any]:
    """Speed (ms per ``window``² window, min over interleaved rounds) and test-split mIoU of each
    variant against float32 ONNX Runtime; writes the int8 verdict for the model hash."""
    from engine.training.runs import data_from_card

    cache_dir = backend_cache_dir() if cache_dir is None else cache_dir
    data = data_from_card(meta)
    test = data.part("test").items
    train = data.part("train").items
    classes = len(spec.classes)
    t0 = time.perf_counter()
    f32 = onnx_graph(model, spec, cache_dir)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train), min(calib_images, len(train)), replace=False)
    calib = [_pad32(train[i][0]) for i in pick]
    variants: dict[str, Run] = {"onnxruntime-float32": OnnxRunner(model, spec, window, cache_dir),
                                "onnxruntime-int8-dynamic": _session(_dynamic_int8(f32))}
    try:  # the int8 graph the runner uses (INT8): static, calibrated on training images
        make_int8_graph(model, spec, calib, cache_dir)
        variants[INT8] = OnnxRunner(model, spec, window, cache_dir, int8=True)
    except Exception as exc:  # noqa: BLE001 - an operator the static quantiser cannot handle
        log.warning("static int8 quantisation failed: %s", exc)
    import torch

    flags = cpu_flags()
    variants["torch-float32"] = TorchRunner(model, spec)
    if {"avx512_bf16"} & flags or "amx_bf16" in flags:
        variants["torch-bfloat16"] = _autocast(model, spec, torch.bfloat16)
    if {"avx512_fp16", "amx_fp16"} & flags:
        variants["torch-float16"] = _autocast(model, spec, torch.float16)
    x = rng.integers(0, 256, (batch, window, window, 3), dtype=np.uint8)
    best = {k: float("inf") for k in variants}
    for run in variants.values():
        run(x)
    for _ in range(rounds):
        for k, run in variants.items():
            t = time.perf_counter()
            run(x)
            best[k] = min(best[k], time.perf_counter() - t)
    scores = {k: miou_of(run, test, classes) for k, run in variants.items()}
    ref = scores["onnxruntime-float32"]
    ref_ms = 1e3 * best["onnxruntime-float32"] / batch
    out: dict[str, Any] = {}
    for k in variants:
        ms = 1e3 * best[k] / batch
        drop = ref["miou"] - scores[k]["miou"]
        out[k] = {"ms_per_window": ms, "speedup_vs_float32_onnx": ref_ms / ms, **scores[k],
                  "miou_drop": drop,
                  "usable": bool(k == "onnxruntime-float32" or (drop <= MAX_MIOU_DROP and ms < ref_ms))}
    report = {"model_sha256": model_hash(model), "model": f"{spec.name} {spec.version}",
              "test_images": len(test), "window": window, "batch": batch, "rounds": rounds,
              "cpu": cpu_model(), "threads": cpu_threads(),
              "cpu_flags": sorted(f for f in flags if "bf16" in f or "fp16" in f or "vnni" in f or "amx" in f),
              "max_miou_drop": MAX_MIOU_DROP, "variants": out, "seconds": time.perf_counter() - t0,
              "note": "float32 ONNX Runtime is the reference; a variant is usable when its test-split "
                      "mIoU drop is at most max_miou_drop and it is faster"}
    if remember and INT8 in out:
        v = out[INT8]
        verdict = {"accepted": v["usable"], "miou_drop": v["miou_drop"], "speedup": v["speedup_vs_float32_onnx"],
                   "test_images": len(test), "model_sha256": report["model_sha256"]}
        _store(verdict_file(model, cache_dir), json.dumps(verdict, indent=1).encode())
    return report
