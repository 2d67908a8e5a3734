"""CLI commands: ``train-teacher``, ``distill``, ``evaluate`` and ``bench distill``.

torch is imported inside the handlers only, so ``cocopath-engine --help`` and the slide commands
stay fast. User errors raise :class:`~engine.errors.CocoPathError` (one line on stderr, exit 1);
a cancelled run exits 3. Data-parallel training runs the same commands under torchrun, e.g.
``torchrun --standalone --nproc_per_node 2 -m engine.cli train-teacher …`` (``--batch-size`` is the
global batch; gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError

DEFAULT_REGEX = r"^(.*?)-\d+-400-\d+$"


def _common_data(p: argparse.ArgumentParser, regex_required: bool, data_required: bool = True) -> None:
    p.add_argument("--data", action="append", required=data_required, metavar="DIR",
                   help="folder with images/ and masks/ (repeatable)" + ("" if data_required else
                        "; default: the folders the model card names, under the shared data's seg/"))
    p.add_argument("--group-regex", required=regex_required, default=None,
                   help="regex on file stems whose first group is the case id (split by case; "
                        "default: the one in the model's config)")
    p.add_argument("--split-file", default=None,
                   help="split JSON (training: made if missing, reused if present; evaluate: read, and by "
                        "default the model card's case lists)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="resize so the short side is SIZE (default native)")
    p.add_argument("--mask-mode", choices=("binary", "index"), default="binary")
    p.add_argument("--classes", default="background,tumour", help="comma-separated class names")
    p.add_argument("--negative", action="append", default=[], metavar="NAME",
                   help="a --data folder (by name) whose images hold no tumour: masks taken as all background "
                        "(repeatable)")
    p.add_argument("--balance", action="store_true",
                   help="oversample training images so tiles with and without tumour are as many")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _common_train(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split across torchrun processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=224, help="training crop size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.safetensors if present")
    p.add_argument("--state-every", type=int, default=100, help="steps between resumable states")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-teacher", help="train a teacher segmentation network from scratch")
    _common_data(p, regex_required=True)
    _common_train(p, steps=2000)
    p.add_argument("--model", default="unet-resnet50", help="unet-resnet50, unet-resnet34, …")
    p.add_argument("--encoder-weights", default=None, help="local pretrained encoder weights (.safetensors)")
    p.add_argument("--out", required=True, help="T.safetensors (a T.json config is written beside it)")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a compact student from a teacher")
    _common_data(p, regex_required=False)
    _common_train(p, steps=2000)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors)")
    p.add_argument("--method", default="coco-full", help="student, kd, skd, cwd, ft, coco, coco-gram, coco-adv, coco-full, or a .toml")
    p.add_argument("--student", default="mobile-unet", help="mobile-unet, mobile-unet-small")
    p.add_argument("--paraphraser-steps", type=int, default=None, help="override the config's paraphraser pre-training steps")
    p.add_argument("--out", required=True, help="S.safetensors")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="mIoU / Dice / pixel accuracy of a model on a split")
    _common_data(p, regex_required=False, data_required=False)
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--thresholds", default=None, metavar="T,T,…",
                   help="instead of the argmax, call a pixel tumour where its tumour probability exceeds "
                        "each T (two-class models): the scores per source folder and the share of "
                        "pixels called tumour on the normal / LGIN / HGIN tiles, at each T, in one pass")
    p.set_defaults(func=cmd_evaluate)

    b = bench.add_parser("scale", help="the training tiles' µm/px checked against nuclei of known size (JSON)")
    b.add_argument("--per-set", type=int, default=60, help="images per tile folder (spread over it)")
    b.add_argument("--out", default=None, help="write JSON here and Markdown beside it")
    b.set_defaults(func=cmd_bench_scale)

    b = bench.add_parser("distill", help="ablation of distillation methods on ebhi-adenocarcinoma")
    b.add_argument("--quick", action="store_true", help="same as --protocol quick: tiny images, few steps (minutes)")
    b.add_argument("--protocol", choices=("quick", "session", "cpu", "cpu-long", "full"), default="full",
                   help="quick (minutes), session (~2 h on 2 cores), cpu (tumour + negatives, crop bank, "
                        "3 seeds; ~2.5 h on 2 cores), cpu-long (the same, 4x longer; across sessions), "
                        "full (5 seeds; GPU)")
    b.add_argument("--workdir", default=None,
                   help="keep checkpoints and finished runs here; a rerun with the same settings resumes")
    b.add_argument("--ship", default=None, metavar="DIR",
                   help="then write the best student (by validation mIoU) and its model card into DIR "
                        "(needs --workdir), e.g. resources/models")
    b.add_argument("--ship-method", default=None, metavar="METHOD",
                   help="with --ship: ship this method's student instead of the best by validation")
    b.add_argument("--force", action="store_true",
                   help="with --ship: ship even when the new student is worse than the one it replaces (lower "
                        "mIoU, or more tumour called on the tiles without tumour or on a benign slide)")
    b.add_argument("--out", default=None, help="write the JSON here (a .md table is written beside it)")
    b.add_argument("--data", default=None, help="dataset folder (default: shared ebhi-adenocarcinoma), or for "
                                                  "the mixture protocols the folder holding its folders "
                                                  "(default: shared seg/)")
    b.add_argument("--methods", default=None, help="comma-separated subset of methods")
    b.add_argument("--seeds", type=int, default=None, help="seeds per method (default 1 quick, 3 full)")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--device", default="auto")
    b.add_argument("--teacher-only", action="store_true",
                   help="stop after the teacher and the crop bank (then run --runs-only processes in parallel)")
    b.add_argument("--finished-only", action="store_true",
                   help="report the runs finished in --workdir and train nothing (missing ones are listed)")
    b.add_argument("--runs-only", action="store_true",
                   help="train and evaluate the runs only: no speed measurement, no report. Processes "
                        "sharing a --workdir share its runs: each skips a run another has locked")
    b.set_defaults(func=cmd_bench_distill)


# --------------------------------------------------------------------------- helpers
def _setup(args: argparse.Namespace) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _progress_printer(enabled: bool):  # noqa: ANN202
    """Progress on stderr: one updating line on a terminal, a line every 5 % into a log file."""
    if not enabled:
        return None
    tty = sys.stderr.isatty()

    def show(p: Any) -> None:
        if not tty and p.step != p.total and p.step % max(1, p.total // 20):
            return
        vals = " ".join(f"{k}={v:.4f}" for k, v in p.metrics.items() if k.startswith("loss") or k == "total")
        end = "\n" if p.step == p.total or not tty else "\r"
        print(f"{p.stage} {p.step}/{p.total} {vals}", end=end, file=sys.stderr, flush=True)

    return show


def _spec(args: argparse.Namespace, split_file: str, size: int | None, crop: int | None,
          meta: dict[str, Any] | None = None):  # noqa: ANN202
    from engine.training.runs import DataSpec, check_regex

    regex = args.group_regex or (meta or {}).get("data", {}).get("group_regex") or DEFAULT_REGEX
    negatives = tuple(args.negative) or tuple((meta or {}).get("data", {}).get("negatives") or ())
    names = {Path(d).name for d in args.data}
    return DataSpec(tuple(str(Path(d)) for d in args.data), check_regex(regex), split_file,
                    args.split_seed, size, crop, args.mask_mode, tuple(c.strip() for c in args.classes.split(",")),
                    negatives=tuple(n for n in negatives if n in names or args.negative), balance=args.balance)


def _emit(args: argparse.Namespace, payload: dict[str, Any], line: str) -> int:
    code = 0 if payload.get("status", "done") == "done" else 3
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return code
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(line)
    return code


def _out_path(out: str) -> Path:
    path = Path(out)
    if path.suffix != ".safetensors":
        raise CocoPathError(f"--out {out}: the checkpoint name must end in .safetensors")
    return path


def _config(args: argparse.Namespace):  # noqa: ANN202
    from engine.training.trainer import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       device=args.device, state_every=args.state_every)


# --------------------------------------------------------------------------- handlers
def cmd_train_teacher(args: argparse.Namespace) -> int:
    _setup(args)
    from engine.training.runs import load_data, train_teacher

    out = _out_path(args.out)
    split = args.split_file or str(out.with_suffix(".split.json"))
    data = load_data(_spec(args, split, args.size, args.crop), seed=args.seed)
    kw = {"encoder_weights": args.encoder_weights} if args.encoder_weights else {}
    _model, res, meta = train_teacher(
        data, args.model, _config(args), out, model_kw=kw, progress=_progress_printer(sys.stderr.isatty()),
        state_path=out.with_suffix(".state.safetensors"), resume=args.resume)
    payload = {"status": res.status, "out": str(out), "split_file": split, **dict(res.metrics),
               "val": meta["metrics"].get("val")}
    return _emit(args, payload, f"teacher {res.status}: {out} (val mIoU {res.metrics.get('val_miou', float('nan')):.4f})")


def cmd_distill(args: argparse.Namespace) -> int:
    _setup(args)
    from engine.training.checkpoints import load_model
    from engine.training.runs import distill_student, load_data

    out = _out_path(args.out)
    teacher, tmeta = load_model(args.teacher)
    size = args.size if args.size is not None else tmeta.get("input", {}).get("short_side")
    if args.split_file:
        data = load_data(_spec(args, args.split_file, size, args.crop, tmeta), seed=args.seed)
    else:  # the teacher's own split, from the case lists in its card
        from engine.training.datasets import find_pairs, split_from_cases

        spec = _spec(args, "", size, args.crop, tmeta)
        pairs = find_pairs(spec.folders, qualified=len(spec.folders) > 1)
        data = load_data(spec, seed=args.seed,
                         split=split_from_cases([p.key for p in pairs], spec.group_regex, tmeta.get("data") or {}))
    student, res, meta = distill_student(
        data, teacher, args.method, args.student, _config(args), out,
        paraphraser_steps=args.paraphraser_steps, progress=_progress_printer(sys.stderr.isatty()),
        state_path=out.with_suffix(".state.safetensors"), resume=args.resume)
    payload = {"status": res.status, "out": str(out), "method": args.method, **dict(res.metrics),
               "val": meta["metrics"].get("val"), "teacher": str(args.teacher)}
    return _emit(args, payload, f"student {res.status}: {out} (val mIoU {res.metrics.get('val_miou', float('nan')):.4f})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.training.checkpoints import load_model
    from engine.training.evaluate import evaluate
    from engine.training.runs import data_from_card, load_data

    model, meta = load_model(args.model)
    size = args.size if args.size is not None else meta.get("input", {}).get("short_side")
    if not args.data and (args.split == "all" or args.split_file):
        raise CocoPathError("--split all and --split-file need --data (the folders to read)")
    if args.split == "all":
        from engine.training.datasets import find_pairs
        from engine.training.loader import SegDataset

        dataset = SegDataset(find_pairs(args.data), size, args.mask_mode)
    elif args.split_file:
        if not Path(args.split_file).is_file():
            raise CocoPathError(f"--split-file {args.split_file}: no such file (evaluate reads a split, it never "
                                "draws one; leave it out to use the model card's case lists)")
        dataset = load_data(_spec(args, args.split_file, size, None, meta)).part(args.split)
    else:  # the split the card's case lists describe, over the folders given
        dataset = data_from_card(meta, folders=args.data).part(args.split)
    classes = meta.get("classes") or [c.strip() for c in args.classes.split(",")]
    if args.thresholds:
        return _threshold_sweep(args, model, dataset, classes)
    res = evaluate(model, dataset, classes, device=args.device)
    payload = {"model": str(args.model), "split": args.split, **res}
    return _emit(args, payload, f"{args.split}: mIoU {res['miou']:.4f}  Dice {res['dice']:.4f}  "
                                f"pixel accuracy {res['pixel_accuracy']:.4f} ({res['images']} images)")


def _threshold_sweep(args: argparse.Namespace, model: Any, dataset: Any, classes: list[str]) -> int:
    from engine.training.mixture import negative_text, sweep_by_source

    try:
        ths = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        raise CocoPathError(f"--thresholds {args.thresholds}: give numbers between 0 and 1, e.g. 0.5,0.7") from None
    if not ths or not all(0 < t < 1 for t in ths):
        raise CocoPathError(f"--thresholds {args.thresholds}: each must lie between 0 and 1")
    if len(classes) != 2:
        raise CocoPathError(f"--thresholds needs a two-class model; {args.model} has {len(classes)} classes")
    rows = [{"threshold": t, **r} for t, r in zip(ths, sweep_by_source(model, dataset, classes, ths, args.device))]
    lines = []
    for r in rows:
        folders = ", ".join(f"{n} " + (f"mIoU {v['miou']:.4f}" if "miou" in v else negative_text(v))
                            for n, v in r["per_source"].items())
        neg = r["negatives_tumour_share"]
        lines.append(f"threshold {r['threshold']:g}: mIoU {r['miou']:.4f}"
                     + (f", negatives {100 * neg:.1f} % called tumour" if neg is not None else "") + f" ({folders})")
    return _emit(args, {"model": str(args.model), "split": args.split, "thresholds": rows}, "\n".join(lines))


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from engine.training.scale_check import markdown, shared_data_report
    from engine.training.ship import EBHI_MPP_ESTIMATE

    report = shared_data_report(args.per_set)
    md = markdown(report, EBHI_MPP_ESTIMATE)
    if args.out:
        from engine.atomic import write_report

        write_report(Path(args.out), report, md)
    print(md if args.out else json.dumps(report, indent=1))
    return 0


def cmd_bench_distill(args: argparse.Namespace) -> int:
    _setup(args)
    from engine.training.bench import run_benchmark, write_outputs

    if args.ship and not args.workdir:
        raise CocoPathError("--ship needs --workdir: the student to ship is read from there")
    report = run_benchmark(protocol="quick" if args.quick else args.protocol, data_dir=args.data, seeds=args.seeds, device=args.device,
                           methods=args.methods.split(",") if args.methods else None,
                           progress=_progress_printer(True), workdir=Path(args.workdir) if args.workdir else None,
                           teacher_only=args.teacher_only, runs_only=args.runs_only,
                           finished_only=args.finished_only, benign_check=getattr(args, "benign_check", None))
    if report.get("partial"):
        if args.out or args.ship:
            raise CocoPathError("--teacher-only / --runs-only write no report: run again without them for --out / --ship")
        done = {m: len(rs) for m, rs in report["runs"].items()}
        print(f"teacher test mIoU {report['teacher']['test_miou']:.4f}; runs done: {done}")
        return 0
    md = write_outputs(report, Path(args.out) if args.out else None)
    if args.ship:
        from engine.training.ship import ship_student

        shipped = ship_student(report, Path(args.workdir), Path(args.ship), args.ship_method, args.data,
                               force=args.force, benign_check=getattr(args, "benign_check", None))
        print(f"shipped {shipped['student']} (method {shipped['method']})", file=sys.stderr)
    print(json.dumps(report, indent=1) if not args.out else md)
    return 0
