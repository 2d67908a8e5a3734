"""``cocopath [SLIDE]``: the GUI. Also ``--screenshot OUT.png``, ``--bench-viewer OUT.json``,
``--bench-annotations OUT.json``, ``--bench-predictions OUT.json``, ``--bench-first-field OUT.json``
and ``--bench-training OUT.json``.

Start-up stays light: Qt and the slide engine only (torch is never imported here).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from app.application import make_application, wait_until_drawn

T_START = time.perf_counter()
log = logging.getLogger("app")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cocopath", description="CoCoPath whole-slide viewer.")
    p.add_argument("slide", nargs="?", help="a slide file (or a DICOM slide's folder) to open")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="open SLIDE, wait until every visible tile is drawn, save the window, exit")
    p.add_argument("--predict", action="store_true",
                   help="with --screenshot: run the active model (the default student unless another was "
                        "chosen) on the whole slide first, then save the window with its mask")
    p.add_argument("--center", metavar="X,Y", help="centre the view on level-0 pixel X,Y")
    p.add_argument("--magnification", type=float, metavar="M", help="show the slide at M× (e.g. 10)")
    p.add_argument("--size", metavar="WxH", default=None,
                   help="window size, e.g. 1600x1000; with --bench-viewer: the pyramid's side (50000)")
    p.add_argument("--bench-viewer", metavar="OUT.json", help="run the viewer benchmark, write JSON")
    p.add_argument("--bench-annotations", metavar="OUT.json",
                   help="run the annotation-layer benchmark (10 000 annotations), write JSON")
    p.add_argument("--bench-predictions", metavar="OUT.json",
                   help="run the prediction-overlay benchmark (a model run while panning), write JSON")
    p.add_argument("--bench-first-field", metavar="OUT.json",
                   help="run the first-field benchmark (Run → visible field of predictions on screen, "
                        "cold and warm user cache, against the back-end trial first), write JSON")
    p.add_argument("--bench-training", metavar="OUT.json",
                   help="run the training benchmark (pan frames while a fine-tuning round trains "
                        "in its subprocess, against none), write JSON")
    p.add_argument("--bench-model", metavar="M.safetensors", default=None,
                   help="with --bench-predictions / --bench-training: the model to run or "
                        "fine-tune (default: the shipped student, else an untrained one)")
    p.add_argument("--bench-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--bench-slide", default=None, help=argparse.SUPPRESS)  # reuse a built pyramid
    p.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--first-frame-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p.parse_args(argv)


def _pair(text: str, sep: str, what: str, kind: type = float) -> tuple:
    try:
        a, b = text.lower().split(sep)
        return kind(a), kind(b)
    except ValueError:
        raise SystemExit(f"cocopath: error: {what} must look like A{sep}B, got {text!r}") from None


def _ensure_platform(interactive: bool) -> bool:
    """On a machine with no screen (no X, no Wayland), screenshots and benchmarks render offscreen;
    an interactive session cannot, so it says so instead of running an invisible window."""
    if sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM") \
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if interactive:
            print("cocopath: no display to open a window on (neither DISPLAY nor WAYLAND_DISPLAY "
                  "is set); run it in a desktop session, under xvfb-run, or with --screenshot "
                  "OUT.png", file=sys.stderr)
            return False
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.predict and not args.screenshot:
        print("cocopath: error: --predict goes with --screenshot", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    headless = bool(args.screenshot or args.first_frame_probe or _wants_benchmark(args))
    if not _ensure_platform(interactive=not headless):
        return 1
    if _wants_benchmark(args):
        return run_benchmark(args)
    size = _pair(args.size, "x", "--size", int) if args.size else None
    center = _pair(args.center, ",", "--center") if args.center else None
    headless = bool(args.screenshot or args.first_frame_probe)

    app = make_application()
    from app.main_window import MainWindow

    window = MainWindow(interactive_errors=not headless, remember=not headless)
    if size:
        window.resize(*size)
    slide = args.slide
    if slide is None:
        from app.sample_download import sample_path_or_none

        local = sample_path_or_none()
        slide = str(local) if local else None
    window.show()
    if slide is None:
        if headless:
            print("cocopath: error: no slide given (and no COCOPATH_SAMPLE or downloaded sample)",
                  file=sys.stderr)
            return 2
        window.offer_sample_download()
        return app.exec()  # type: ignore[attr-defined]
    if not window.open_path(slide):
        if headless:
            print(f"cocopath: error: {window.last_error}", file=sys.stderr)
            return 1
        return app.exec()  # type: ignore[attr-defined]
    view = window.view
    if center or args.magnification:
        app.processEvents()  # type: ignore[attr-defined]
        if args.magnification:
            if not view.presets() and view.geometry_ and not view.geometry_.base_magnification:
                print("cocopath: error: this slide has no known magnification; omit --magnification",
                      file=sys.stderr)
                return 2
            view.set_magnification(args.magnification)
        if center:
            view.center_on(*center)
    if args.first_frame_probe:
        return _first_frame(window)
    if args.predict and not _predict(window, args.timeout):
        print(f"cocopath: error: the model did not finish on this slide: {window.last_error or 'timed out'}",
              file=sys.stderr)
        return 1
    if args.screenshot:
        return _screenshot(window, Path(args.screenshot), args.timeout)
    return app.exec()  # type: ignore[attr-defined]


def _wants_benchmark(args: argparse.Namespace) -> bool:
    return bool(args.bench_viewer or args.bench_annotations or args.bench_predictions
                or args.bench_training or args.bench_first_field)


def run_benchmark(args: argparse.Namespace) -> int:
    """``--bench-*``: the benchmark modules (:mod:`app.bench`) are imported here, only when asked
    for; nothing else in the app imports them."""
    if args.bench_training:
        from app.bench.training import run_training_benchmark

        return run_training_benchmark(Path(args.bench_training), side=args.bench_size or 12_000,
                                      model=Path(args.bench_model) if args.bench_model else None)
    if args.bench_first_field:
        from app.bench.first_field import run_first_field_benchmark

        return run_first_field_benchmark(Path(args.bench_first_field), side=args.bench_size or 12_000,
                                         model=Path(args.bench_model) if args.bench_model else None)
    if args.bench_predictions:
        from app.bench.predictions import run_prediction_benchmark

        return run_prediction_benchmark(Path(args.bench_predictions), side=args.bench_size or 12_000,
                                        model=Path(args.bench_model) if args.bench_model else None)
    if args.bench_annotations:
        from app.bench.annotations import run_annotation_benchmark

        return run_annotation_benchmark(Path(args.bench_annotations),
                                        side=args.bench_size or 30_000)
    if args.bench_viewer:
        from app.bench.viewer import run_benchmark as run_viewer_benchmark

        side = args.bench_size or 50_000
        if args.size:
            try:
                side = int(args.size)
            except ValueError:
                print(f"cocopath: error: with --bench-viewer, --size is the pyramid's side in pixels "
                      f"(e.g. 50000), got {args.size!r}", file=sys.stderr)
                return 2
        if side < 1024:
            print("cocopath: error: the benchmark pyramid needs a side of at least 1024 px", file=sys.stderr)
            return 2
        return run_viewer_benchmark(Path(args.bench_viewer), size=side,
                             slide=Path(args.bench_slide) if args.bench_slide else None)
    raise ValueError("no --bench-* option given")

def _first_frame(window: object) -> int:
    """Benchmark probe: seconds from start to the first slide frame, then to all tiles final."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    view = window.view  # type: ignore[attr-defined]
    seen: list[float] = []
    view.painted.connect(lambda rec: seen.append(time.perf_counter()))
    while not seen:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 5)
    print(f"first_frame_s={seen[0] - T_START:.4f} torch={'torch' in sys.modules}", flush=True)
    ok = wait_until_drawn(window, 60.0)
    print(f"complete_s={time.perf_counter() - T_START:.4f} ok={ok}", flush=True)
    return 0 if ok else 1


def _predict(window: object, timeout: float) -> bool:
    """Run the active model on the open slide from the Model panel's code path; wait for the end."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    pa = window.predictions  # type: ignore[attr-defined]
    wait_until_drawn(window, timeout)
    if not pa.run():
        return False
    deadline = time.monotonic() + max(timeout, 600.0)
    while pa.bridge.running and time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)
    QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 200)
    return not pa.bridge.running and pa.last_finished is not None


def _screenshot(window: object, out: Path, timeout: float) -> int:
    if not wait_until_drawn(window, timeout):
        print(f"cocopath: error: the slide was not fully drawn within {timeout:g} s", file=sys.stderr)
        return 1
    if window.last_error:  # type: ignore[attr-defined]  # parts of the slide could not be read
        print(f"cocopath: error: {window.last_error}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    image = window.grab()  # type: ignore[attr-defined]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out)):
        print(f"cocopath: error: could not write {out}", file=sys.stderr)
        return 1
    window.close()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
