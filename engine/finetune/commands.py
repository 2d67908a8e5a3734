"""``cocopath-engine finetune`` and ``cocopath-engine models …``: the learning loop headless.

    cocopath-engine finetune --project P [--slides S…] [--steps N] [--no-teacher] [--teacher T]
                             [--activate if-not-worse|always|never] [--json | --events]
    cocopath-engine models list --project P [--json]
    cocopath-engine models activate V --project P
    cocopath-engine models rollback --project P
    cocopath-engine models import FILE --project P [--note TEXT]
    cocopath-engine models export V OUT.safetensors --project P

``finetune --events`` prints one JSON event per line (see :mod:`engine.finetune.job`), the last one
the result; ``--json`` prints the result as JSON; otherwise a few human lines. SIGTERM or Ctrl+C
cancels a round cleanly (registry unchanged). Exit codes: 0 done or nothing to learn, 1 failed,
130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from engine.finetune.data import MAX_OTHER_SLIDES
    from engine.finetune.round import ACTIVATE_CHOICES, RoundSettings

    d, c = RoundSettings(), RoundSettings.for_device("cpu", method="coco-full")
    p = sub.add_parser("finetune", help="fine-tune the project's student from its correction ROIs")
    p.add_argument("--project", required=True, type=Path, help="the project folder")
    p.add_argument("--slides", nargs="+", default=None, metavar="SLIDE",
                   help="slides to learn from (ids, paths or names; default: all with ROIs)")
    p.add_argument("--budget", dest="budget_s", type=float, default=None, metavar="SECONDS",
                   help="wall-clock budget of the round (default 60 s on the CPU, 20 s on a GPU); the "
                        "round sizes its steps to it from its own measured step time")
    p.add_argument("--steps", type=int, default=None,
                   help="a fixed number of student steps instead of the budget's (distillation methods: "
                        f"default {d.nominal_steps})")
    p.add_argument("--no-teacher", action="store_true",
                   help="distil from the frozen current student instead of a teacher")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (.safetensors)")
    p.add_argument("--activate", choices=ACTIVATE_CHOICES, default=d.activate,
                   help="make the new version active (default: if it is not worse on held-out ROIs)")
    p.add_argument("--holdout", type=float, default=d.holdout, help="share of ROIs held out")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default {d.batch_size} ({c.batch_size} on the CPU for a distillation method)")
    p.add_argument("--patch", type=int, default=d.patch, help="patch side in pixels (multiple of 32)")
    p.add_argument("--unlabelled-per-roi", type=int, default=d.unlabelled_per_roi)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3 anchored, 3e-4 for a distillation method)")
    p.add_argument("--method", default=d.method,
                   help="anchored (default: frozen encoder, the parent kept as the target where nobody "
                        "corrected) or a distillation config (coco-full, kd, …)")
    p.add_argument("--replay-tiles", type=int, default=d.replay_tiles,
                   help="tiles of the model's training data replayed and checked (anchored; 0: none)")
    p.add_argument("--trainable-blocks", type=int, default=d.trainable_blocks,
                   help="anchored: how many of the decoder's last blocks learn, with the head (the rest "
                        "is frozen and computed once)")
    p.add_argument("--force", action="store_true",
                   help="fine-tune even on a slide far coarser than the model reads")
    p.add_argument("--new-class", dest="new_classes", action="append", default=[], metavar="CLASS",
                   help="learn this project class as a new output class of the model when the model lacks "
                        "it (repeatable; anchored method; else such a class is taken as not tumour)")
    p.add_argument("--check-first", nargs="+", default=[], metavar="SLIDE",
                   help="slides nobody corrected whose masks the round checks first (ids, paths or names; "
                        "it checks at most %d, the rest in the project's order)" % MAX_OTHER_SLIDES)
    p.add_argument("--teacher-steps", type=int, default=None, help="teacher adaptation steps")
    p.add_argument("--paraphraser-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="held-out measurement interval")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument("--events", action="store_true", help="print one JSON event per line")
    p.set_defaults(func=_finetune)

    m = sub.add_parser("models", help="the project's model versions: list, activate, roll back, "
                                      "import, export")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    m.set_defaults(func=lambda _a: _usage(m))

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        a = msub.add_parser(name, help=help_)
        a.add_argument("--project", required=True, type=Path, help="the project folder")
        a.add_argument("--json", action="store_true", help="print JSON")
        return a

    a = action("list", "every version, oldest first, the active one marked")
    a.set_defaults(func=_models_list)
    a = action("activate", "make a version the active one")
    a.add_argument("version")
    a.set_defaults(func=_models_activate)
    a = action("rollback", "activate the active version's parent")
    a.set_defaults(func=_models_rollback)
    a = action("import", "add a .safetensors checkpoint as a new version")
    a.add_argument("file", type=Path)
    a.add_argument("--note", default="", help="a note shown with the version")
    a.set_defaults(func=_models_import)
    a = action("export", "copy a version to a .safetensors file (and its .json card)")
    a.add_argument("version")
    a.add_argument("out", type=Path)
    a.set_defaults(func=_models_export)

    if importlib.util.find_spec("engine.finetune.bench") is not None:
        from engine.finetune.bench import register_bench

        register_bench(bench)
    if importlib.util.find_spec("engine.finetune.slides_bench") is not None:
        from engine.finetune.slides_bench import register_bench as register_loop_bench

        register_loop_bench(bench)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- finetune --------------------------------------------------------------------------------------

def settings_from_args(args: argparse.Namespace) -> Any:
    from engine.finetune.round import RoundSettings

    sized = {name: getattr(args, name) for name in ("steps", "batch_size", "teacher_steps", "paraphraser_steps",
                                                    "budget_s", "lr")
             if getattr(args, name) is not None}  # the rest: sized for the device the round runs on
    return RoundSettings.for_device(
        args.device, **sized, slides=tuple(args.slides) if args.slides else None,
        use_teacher=not args.no_teacher, teacher=args.teacher, holdout=args.holdout,
        patch=args.patch, unlabelled_per_roi=args.unlabelled_per_roi,
        seed=args.seed, activate=args.activate, method=args.method, eval_every=args.eval_every,
        replay_tiles=args.replay_tiles, trainable_blocks=args.trainable_blocks, force=args.force,
        new_classes=tuple(args.new_classes), check_first=tuple(args.check_first))


class _Printer:
    """Where a round's progress goes: JSON events, or human lines on stderr (``--json``: none)."""

    def __init__(self, events: bool, quiet: bool) -> None:
        self.events, self.quiet = events, quiet
        self._last: tuple[str, int] | None = None

    def event(self, ev: Any) -> None:
        sys.stdout.write(ev.to_line() + "\n")
        sys.stdout.flush()

    def progress(self, p: Any) -> None:
        from engine.finetune.job import progress_event

        ev = progress_event(p)
        if self.events:
            self.event(ev)
            return
        if self.quiet:
            return
        d = ev.data
        if ev.kind == "eval":
            print(f"  held-out mIoU at step {d['step']}: {d['heldout_miou']:.3f}", file=sys.stderr, flush=True)
        elif d["total"] and (d["step"] == d["total"] or d["step"] % max(1, d["total"] // 10) == 0):
            loss = d["metrics"].get("total")
            eta = d.get("eta_s")
            print(f"  {d['stage']}: {d['step']}/{d['total']}" + (f" loss {loss:.4f}" if loss is not None else "")
                  + (f", about {eta:.0f} s left" if eta is not None else ""), file=sys.stderr, flush=True)


def _finetune(args: argparse.Namespace) -> int:
    from engine.finetune.job import FinetuneEvent
    from engine.finetune.round import run_round
    from engine.jobs import CancelToken

    # A round shares the CPU with the viewer: threads that sleep instead of spinning while they
    # wait (measured on 2 busy cores: a training step 5× faster with 2 threads, and the cores free
    # for the GUI between steps). Only effective before torch is first imported, as here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.threads is not None:
        if args.threads < 1:
            raise CocoPathError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    printer = _Printer(args.events, args.json)
    cancel = CancelToken()

    def stop(_sig: int, _frame: Any) -> None:
        cancel.cancel()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            settings = settings_from_args(args)
            result = run_round(args.project, settings, printer.progress, cancel)
        except Exception as exc:  # noqa: BLE001 - with --events, even a bug ends with a result
            if not args.events:
                raise
            log.exception("fine-tuning round failed")
            message = str(exc) if isinstance(exc, CocoPathError) else f"the round failed: {exc!r}"
            printer.event(FinetuneEvent("error", {"message": message}))
            printer.event(FinetuneEvent("result", {"status": "failed", "version": None, "parent": None,
                                                   "before": {}, "after": {}, "activated": False,
                                                   "seconds": 0.0, "message": message, "curves": {},
                                                   "data": {}}))
            return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if args.events:
        if result.status == "failed":
            printer.event(FinetuneEvent("error", {"message": result.message}))
        printer.event(FinetuneEvent("result", result.to_dict()))
    elif args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        _print_result(result)
    if result.status == "failed":
        if not args.events and not args.json:
            raise CocoPathError(result.message)
        return 1
    return 130 if result.status == "cancelled" else 0


def _print_result(r: Any) -> None:
    if r.status == "done":
        print(f"{r.version} (from {r.parent}): held-out mIoU {r.before['miou']:.3f} → {r.after['miou']:.3f}, "
              f"Dice {r.before['dice']:.3f} → {r.after['dice']:.3f} on {r.after['pixels']} px; "
              f"{'active' if r.activated else 'not activated'}; {r.seconds:.0f} s")
        for note in r.data.get("notes", []):
            print(f"  note: {note}")
    elif r.status != "failed":
        print(r.message)


# -- models ----------------------------------------------------------------------------------------

def _registry(args: argparse.Namespace) -> Any:
    from engine.annotations.project import Project
    from engine.finetune.registry import ModelRegistry

    Project.open(args.project, quick_check=False).close()  # a clear error for a wrong folder
    return ModelRegistry.of_project(args.project)


def _row(v: Any, active: str | None) -> dict[str, Any]:
    return {"version": v.version, "active": v.version == active, "parent": v.parent,
            "created": v.created, "metrics": v.metrics, "note": v.note, "path": str(v.path),
            "model": (v.card.get("model") or {}).get("name"), "spec_version": v.card.get("version")}


def _show(args: argparse.Namespace, v: Any, verb: str, reg: Any) -> int:
    if args.json:
        print(json.dumps(_row(v, reg.active_name()), indent=1, ensure_ascii=False))
    else:
        print(f"{verb} {v.version}" + (f" ({v.note})" if v.note else ""))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    active = reg.active_name()
    rows = [_row(v, active) for v in reg.versions()]
    if args.json:
        print(json.dumps({"active": active, "versions": rows}, indent=1, ensure_ascii=False))
        return 0
    if not rows:
        print("no model versions yet (a round seeds the registry with the default model; or "
              "`cocopath-engine models import FILE --project …`)")
    for r in rows:
        miou = r["metrics"].get("heldout_miou")
        score = f"held-out mIoU {miou:.3f}" if isinstance(miou, (int, float)) else ""
        print(f"{'*' if r['active'] else ' '} {r['version']}  {r['created']}  parent {r['parent'] or '—'}"
              f"  {score}  {r['note']}".rstrip())
    return 0


def _models_activate(args: argparse.Namespace) -> int:
    reg = _registry(args)
    return _show(args, reg.activate(args.version), "active:", reg)


def _models_rollback(args: argparse.Namespace) -> int:
    reg = _registry(args)
    return _show(args, reg.rollback(), "rolled back: active", reg)


def _models_import(args: argparse.Namespace) -> int:
    reg = _registry(args)
    return _show(args, reg.import_model(args.file, args.note), "imported as", reg)


def _models_export(args: argparse.Namespace) -> int:
    reg = _registry(args)
    out = reg.export_model(args.version, args.out)
    if args.json:
        print(json.dumps({"version": args.version, "path": str(out), "card": str(out.with_suffix(".json"))}))
    else:
        print(f"exported {args.version} to {out}")
    return 0
