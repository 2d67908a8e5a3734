"""``cocopath-engine info`` and ``cocopath-engine make-pyramid``: slides from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a slide: levels, mpp, vendor, properties")
    p.add_argument("slide", help="slide file, or a DICOM slide's folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--properties", action="store_true", help="list every property too")
    p.set_defaults(func=_info)

    p = sub.add_parser("make-pyramid", help="build a large pyramidal TIFF from real H&E patches")
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="50000x50000", help="WIDTHxHEIGHT (default 50000x50000)")
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_pyramid)


def _info(args: argparse.Namespace) -> int:
    from engine.slide import open_slide

    with open_slide(args.slide) as s:
        i = s.info
        data = {
            "path": i.path,
            "vendor": i.vendor,
            "dimensions": list(i.dimensions),
            "levels": [{"dimensions": list(d), "downsample": ds}
                       for d, ds in zip(i.level_dimensions, i.level_downsamples)],
            "mpp": list(i.mpp) if i.mpp else None,
            "objective_power": i.objective_power,
            "associated_images": list(i.associated_images),
        }
        if args.properties or args.json:
            data["properties"] = dict(i.properties)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(f"{data['path']}\n  vendor: {data['vendor'] or 'unknown'}")
    print(f"  size: {i.dimensions[0]} × {i.dimensions[1]} px, {i.level_count} level(s)")
    for n, lv in enumerate(data["levels"]):
        print(f"    level {n}: {lv['dimensions'][0]} × {lv['dimensions'][1]} (÷{lv['downsample']:g})")
    print(f"  mpp: {'%.4f × %.4f µm/px' % i.mpp if i.mpp else 'not recorded (no physical units)'}")
    print(f"  objective: {f'{i.objective_power:g}×' if i.objective_power else 'not recorded'}")
    print(f"  associated images: {', '.join(i.associated_images) or 'none'}")
    if args.properties:
        for k, v in sorted(data["properties"].items()):
            print(f"    {k} = {v}")
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    from engine.errors import CocoPathError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CocoPathError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 50000x50000") from None
    if w <= 0 or h <= 0:
        raise CocoPathError(f"--size {text!r}: width and height must be positive")
    return w, h


def _make_pyramid(args: argparse.Namespace) -> int:
    from engine.slide.pyramid import build_pyramid_tiff

    w, h = _parse_size(args.size)
    out = build_pyramid_tiff(args.out, w, h, mpp=args.mpp, seed=args.seed)
    print(out)
    return 0
