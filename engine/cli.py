"""``cocopath-engine``: the headless command line for everything the engine does.

Each feature module contributes its sub-commands through a ``register(subparsers, bench)`` function
listed in :data:`COMMAND_MODULES`; ``bench`` is the sub-parser group of ``cocopath-engine bench …``.
Every command returns an exit code; user errors become one line on stderr, never a traceback: a
:class:`~engine.errors.CocoPathError`'s message, and as a last resort a full disk, a read-only
folder, a missing permission or running out of memory (:func:`engine.oserrors.one_line`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from engine.errors import CocoPathError

#: Modules that define ``register(subparsers, bench_subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "engine.slide.commands",
    "engine.training.commands",
    "engine.annotations.commands",
    "engine.inference.commands",
    "engine.finetune.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocopath-engine",
        description="CoCoPath engine: slides, distillation, training, inference (no GUI).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = sub.add_parser("bench", help="benchmarks (JSON results)")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_parser.set_defaults(func=lambda _a: _usage(bench_parser))
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, bench)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        return _usage(parser)
    try:
        return int(args.func(args) or 0)
    except CocoPathError as exc:
        print(f"cocopath-engine: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("cocopath-engine: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: a full disk, a read-only folder, out of memory
        from engine.oserrors import one_line

        message = one_line(exc)
        if message is None:
            raise
        logging.getLogger(__name__).debug("%s", message, exc_info=True)
        print(f"cocopath-engine: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
