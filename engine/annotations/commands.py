"""``cocopath-engine project …`` and ``annotations …``: projects from the command line.

    cocopath-engine project create DIR
    cocopath-engine project add-slide DIR SLIDE
    cocopath-engine project relink DIR FOLDER…
    cocopath-engine annotations import DIR SLIDE FILE [--format geojson|asap|imagescope]
    cocopath-engine annotations export DIR SLIDE OUT [--format geojson|asap|mask] [--downsample N]

(the ``--format`` choices are the names in :mod:`engine.annotations.registry`)
    cocopath-engine bench annotations [--slide SLIDE] [--n N] [--out JSON]

Each takes ``--json`` for a machine-readable summary (counts, areas per class in px² and, when the
slide records its microns per pixel, µm²). Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from engine.annotations.registry import annotation_formats, format_names, joined_titles


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    project = sub.add_parser("project", help="create a project, add slides to it")
    psub = project.add_subparsers(dest="project_command", metavar="ACTION")
    project.set_defaults(func=lambda _a: _usage(project))

    p = psub.add_parser("create", help="create a project folder with an empty database")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_create)

    p = psub.add_parser("add-slide", help="add a slide (path, size, content hash, mpp)")
    p.add_argument("dir", type=Path)
    p.add_argument("slide", help="slide file, or a DICOM slide's folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_add_slide)

    p = psub.add_parser("relink", help="find slides that moved (by content hash) under FOLDERs")
    p.add_argument("dir", type=Path)
    p.add_argument("folders", nargs="+", type=Path, help="folders to search, recursively")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_relink)

    ann = sub.add_parser("annotations", help="import and export annotations of a project's slide")
    asub = ann.add_subparsers(dest="annotations_command", metavar="ACTION")
    ann.set_defaults(func=lambda _a: _usage(ann))

    p = asub.add_parser("import", help=f"import {joined_titles(annotation_formats('import'))}")
    p.add_argument("dir", type=Path)
    p.add_argument("slide", help="the slide: its path, file name or id in the project")
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=format_names("import"),
                   help="default: guessed from the file's content")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_import)

    p = asub.add_parser("export", help=f"export to {joined_titles(annotation_formats('export'))}")
    p.add_argument("dir", type=Path)
    p.add_argument("slide", help="the slide: its path, file name or id in the project")
    p.add_argument("out", type=Path, help=f"output file ({_endings()})")
    p.add_argument("--format", choices=format_names("export"),
                   help="default: from the output's ending")
    p.add_argument("--downsample", type=float, default=1.0,
                   help="label masks: level-0 pixels per mask pixel (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_export)


    p = bench.add_parser("annotations", help="store latency: edits, viewport queries, undo (JSON)")
    p.add_argument("--slide", help="slide to annotate (default: the shared CMU-1 small region)")
    p.add_argument("--n", type=int, default=10_000, help="annotations on the slide (default 10000)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(func=_bench)


def _endings() -> str:
    """".geojson, .json (QuPath GeoJSON); .xml (ASAP XML); …": each written format's endings."""
    return "; ".join(f"{', '.join(f.extensions)} ({f.title})" for f in annotation_formats("export"))


def _bench(args: argparse.Namespace) -> int:
    from engine.annotations.bench import run_bench
    from engine.errors import CocoPathError
    from engine.shared_data import SharedDataMissing, data_path

    if args.n < 1:
        raise CocoPathError("--n must be at least 1")
    try:
        slide = args.slide or data_path("slides", "cmu-1-small-region.svs")
    except SharedDataMissing as exc:
        raise CocoPathError(f"{exc}; or give --slide") from None
    result = run_bench(slide, n=args.n)
    text = json.dumps(_strict(result), indent=2, allow_nan=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _strict(value: object) -> object:
    """``value`` with every NaN or infinity as null: what is printed is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _emit(args: argparse.Namespace, data: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(_strict(data), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print("\n".join(lines))
    return 0


def _summary_lines(summary: dict) -> list[str]:
    out = []
    for name, s in summary.items():
        um = f", {s['area_um2']:.6g} µm²" if s["area_um2"] is not None else ""
        out.append(f"  {name}: {s['count']} ({s['area_px2']:.6g} px²{um})")
    return out


def _create(args: argparse.Namespace) -> int:
    from engine.annotations.project import Project

    with Project.create(args.dir) as project:
        folder = str(project.folder)
    return _emit(args, {"project": folder, "database": str(project.db_path)},
                 [f"created project {folder}"])


def _add_slide(args: argparse.Namespace) -> int:
    from engine.annotations.project import Project

    with Project.open(args.dir) as project:
        rec = project.add_slide(args.slide)
    data = asdict(rec)
    data["mpp"] = list(rec.mpp) if rec.mpp else None
    mpp = f"{rec.mpp[0]:g} µm/px" if rec.mpp else "no mpp"
    return _emit(args, {"project": str(project.folder), "slide": data},
                 [f"slide {rec.id}: {rec.path} ({rec.width} × {rec.height} px, {mpp})"])


def _relink(args: argparse.Namespace) -> int:
    from engine.annotations.project import Project

    with Project.open(args.dir) as project:
        found = project.relink_missing(args.folders)
        missing = project.missing_slides()
    data = {"relinked": [{"id": s.id, "path": s.path} for s in found],
            "still_missing": [{"id": s.id, "path": s.path} for s in missing]}
    lines = [f"relinked slide {s.id}: {s.path}" for s in found]
    lines += [f"still missing: slide {s.id} ({s.path})" for s in missing]
    return _emit(args, data, lines or ["no slide is missing"])


def _import(args: argparse.Namespace) -> int:
    from engine.annotations.formats import import_file
    from engine.annotations.project import Project

    with Project.open(args.dir) as project:
        store = project.store(args.slide)
        result = import_file(store, args.file, args.format)
        total = store.count()
    summary = {k: asdict(v) for k, v in result.summary.items()}
    data = {"file": result.path, "format": result.format, "imported": result.count,
            "slide": store.slide.path, "step": result.step_id, "annotations_on_slide": total,
            "classes": summary, "warnings": list(result.warnings)}
    lines = [f"imported {result.count} annotation(s) from {result.path} ({result.format})",
             *_summary_lines(summary), *(f"  note: {w}" for w in result.warnings)]
    return _emit(args, data, lines)


def _export(args: argparse.Namespace) -> int:
    from engine.annotations.formats import export_file, summarize
    from engine.annotations.project import Project

    with Project.open(args.dir) as project:
        store = project.store(args.slide)
        result = export_file(store, args.out, args.format, args.downsample)
        summary = {k: asdict(v) for k, v in
                   summarize(store.annotations(kind=None), store.slide.mpp).items()}
    data = {"file": result.path, "format": result.format, "exported": result.count,
            "slide": store.slide.path, "classes": summary, "warnings": list(result.warnings)}
    if result.labels:
        data["labels"] = {str(v): n for v, n in result.labels}
    lines = [f"exported {result.count} annotation(s) to {result.path} ({result.format})",
             *_summary_lines(summary), *(f"  note: {w}" for w in result.warnings)]
    return _emit(args, data, lines)
