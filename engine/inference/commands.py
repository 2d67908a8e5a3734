"""``cocopath-engine infer`` and ``cocopath-engine bench infer``.

``infer SLIDE… --model M.safetensors --out DIR [--json] [--level L]`` writes per slide a pyramidal
mask TIFF, QuPath GeoJSON and a summary JSON; a second run resumes (finished slides are skipped,
a stopped one continues from its cache). Under ``torchrun`` each rank takes every WORLD_SIZE-th
slide (by RANK), so ranks never share a slide. A read-only ``--out``, a full disk or running out of
memory is one line and exit status 1; every output is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError
from engine.oserrors import WriteError, write_error, writing

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="predict tumour on whole slides: mask TIFF, GeoJSON, summary")
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE")
    p.add_argument("--model", required=True, type=Path, help="a .safetensors checkpoint")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--level", type=int, default=None,
                   help="slide level to run at when the slide or the model's card has no µm/px "
                        "(default: the level nearest the card's µm/px by the slide's objective "
                        "power, else level 0, the full resolution)")
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "channels_last", "onnx", "onnx-int8"))
    p.add_argument("--backend-cache", type=Path, default=None, metavar="DIR",
                   help="where the measured back-end choice and the ONNX graph are remembered "
                        "(default: the user cache the app uses, shared by every --out)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per network batch (default: as many pixels as 4 windows of 512 px)")
    p.add_argument("--window", type=int, default=None,
                   help="network input in px (default: 1.5x the card's tile, a multiple of 32)")
    p.add_argument("--margin", type=int, default=None,
                   help="overlap of neighbouring windows on each side, px (default: tile/8)")
    p.add_argument("--simplify-um", type=float, default=1.0, help="polygon simplification (µm)")
    p.add_argument("--min-area-um2", type=float, default=200.0, help="smallest island kept (µm²)")
    p.add_argument("--force", action="store_true",
                   help="run even on a slide more than 2x coarser than the model's µm/px (its "
                        "predictions there are not meaningful; without --force that is an error)")
    p.set_defaults(func=_infer)

    b = bench.add_parser("infer", help="whole-slide inference speed (JSON)")
    b.add_argument("--quick", action="store_true", help="small sizes: minutes on 2 CPU cores")
    b.add_argument("--precision", action="store_true",
                   help="reduced precision instead: int8 (dynamic, static), bf16/fp16 where the CPU "
                        "has them, speed and test-split mIoU drop against float32")
    b.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    b.set_defaults(func=_bench)
    if "distill" in bench.choices:  # --ship's never-worse gate also runs the slides (a layer above training)
        bench.choices["distill"].set_defaults(benign_check=_benign_check)


def _benign_check(model: Any, meta: dict[str, Any]) -> dict[str, float]:
    from engine.inference.benign import benign_slide_calls

    return benign_slide_calls(model, meta)


def shard(items: list[Path]) -> list[Path]:
    """This rank's share of ``items`` under torchrun (RANK / WORLD_SIZE), all of them otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CocoPathError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise CocoPathError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return items[rank::world]


def _infer(args: argparse.Namespace) -> int:
    from engine.inference.geometry import run_batch, run_window
    from engine.inference.job import InferOptions, infer_slide, outputs_for
    from engine.inference.spec import load_spec

    for s in args.slides:
        if not s.exists():
            raise CocoPathError(f"{s}: no such slide")
    stems = [outputs_for(args.out, s)["summary"].name for s in args.slides]
    if len(set(stems)) != len(stems):
        raise CocoPathError("two slides share a file name: their outputs would collide; run them "
                            "into different --out folders")
    if args.batch_size is not None and args.batch_size < 1:
        raise CocoPathError("--batch-size must be at least 1")
    spec = load_spec(args.model)
    slides = shard(list(args.slides))
    check_resolution(slides, spec.mpp, force=args.force)
    writable_folder(args.out)
    from engine.inference.onnx_session import backend_cache_dir, no_gpu_visible, remembered_session

    backends = args.backend_cache if args.backend_cache is not None else backend_cache_dir()
    window, margin = run_window(spec)
    window = args.window if args.window is not None else window
    margin = args.margin if args.margin is not None else margin
    if args.batch_size is None:
        args.batch_size = run_batch(window)
    runner = None
    if args.backend == "auto" and (args.device == "cpu" or (args.device == "auto" and no_gpu_visible())):
        # the ONNX Runtime back-end measured before for this file: no torch, no weights to load
        runner = remembered_session(args.model, window, args.batch_size, backends)
    if runner is None:
        runner = _runner_with_torch(args, spec, window, backends)
    opts = InferOptions(level=args.level, window=window, margin=margin, batch_size=args.batch_size, simplify_um=args.simplify_um,
                        min_area_um2=args.min_area_um2)
    summaries = []
    for slide in slides:
        summary = infer_slide(slide, spec, runner, args.out, opts)
        summaries.append(summary)
        if not args.json:
            _print_summary(summary)
    if args.json:
        json.dump(summaries, sys.stdout, indent=1, ensure_ascii=False)
        print()
    return 0 if all(s.get("status") == "done" for s in summaries) else 1


def _runner_with_torch(args: argparse.Namespace, spec: Any, window: int, backends: Path) -> Any:
    """Load the model and pick its back-end (measured now if none is remembered yet)."""
    from engine.inference.job import pick_runner
    from engine.inference.runner import note_file
    from engine.training.checkpoints import load_model

    model, _ = load_model(args.model)
    try:
        runner = pick_runner(model, spec, window, backend=args.backend, device=args.device,
                             batch_size=args.batch_size, cache_dir=backends)
    except OSError as exc:  # remembering the back-end failed (disk full): nothing half-written stays
        leftovers = [*backends.glob(f".*.{os.getpid()}.tmp"),
                     *(f for f in backends.glob("*.choice") if f.stat().st_size == 0)]
        for f in leftovers:
            f.unlink(missing_ok=True)
        raise write_error(exc, backends) from None
    note_file(args.model, model, backends)  # only a shortcut for the next run: this one goes on
    return runner


def writable_folder(out: Path) -> None:
    """Create ``out`` if needed and check that files can be made in it: a read-only folder, a file
    in the way or no permission is one line (:class:`~engine.oserrors.WriteError`) before any work."""
    if out.exists() and not out.is_dir():
        raise WriteError(f"cannot write {out}: it is a file, not a folder")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cocopath-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)


def check_resolution(slides: list[Path], model_mpp: float | None, force: bool = False) -> None:
    """Refuse (a one-line error naming the slide) a slide whose finest level is more than 2× coarser
    than ``model_mpp``; with ``force``, a warning line on stderr and the run goes on."""
    from engine.slide import open_slide
    from engine.slide.resolution import resolution_problem

    for path in slides:
        with open_slide(path) as slide:
            mpp = slide.info.mpp
        problem = resolution_problem(mpp[0] if mpp else None, model_mpp)
        if problem is None:
            continue
        if not force:
            raise CocoPathError(f"{path.name}: {problem} (--force runs it anyway)")
        print(f"cocopath-engine: warning: {path.name}: {problem}; running anyway (--force)",
              file=sys.stderr)


def _print_summary(s: dict) -> None:
    name = Path(s["slide"]).name
    if s.get("skipped"):
        print(f"{name}: already done with {s['model']['version']}")
        return
    if s.get("status") != "done":
        print(f"{name}: {s.get('status')} after {s['tiles']['done']}/{s['tiles']['tissue']} tiles")
        return
    m = s["measurements"]
    unit = "mm²" if m["tissue_area_mm2"] is not None else "px²"
    tissue = m["tissue_area_mm2"] if m["tissue_area_mm2"] is not None else m["tissue_area_px"]
    parts = [f"tissue {tissue:.3g} {unit}"]
    for cls, v in m["classes"].items():
        area = v["area_mm2"] if v["area_mm2"] is not None else v["area_px"]
        frac = v["fraction_of_tissue"] or 0.0
        parts.append(f"{cls} {area:.3g} {unit} ({100 * frac:.1f}% of tissue)")
    print(f"{name}: {', '.join(parts)}; {s['time_s']:.1f} s; {s['outputs']['mask']}")
    if s["resolution"]["note"]:
        print(f"  note: {s['resolution']['note']}")


def _bench(args: argparse.Namespace) -> int:
    from engine.inference.bench import precision_benchmark, run_benchmark

    report = precision_benchmark() if args.precision else run_benchmark(quick=args.quick)
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
