"""A stand-in for ``cocopath-engine finetune --events`` in GUI tests: prints the round's events in
the engine's own line format (``FinetuneEvent.to_line``) with the timing and endings a test asks for.

    python fake_round.py MODE [GO_FILE] [RESULT_JSON]

MODE ``ok``: teacher and student progress, two held-out evaluations, a log line and a line of
noise; then waits until GO_FILE exists (so a test can look at the GUI while the process still
runs), prints RESULT_JSON as the result and exits 0. ``forever``: progress until SIGTERM, then a
"cancelled" result and exit 0 (what the engine does). ``stubborn``: progress, ignoring SIGTERM.
``error``: an error event, a traceback on stderr, exit 2. ``crash``: stderr only, exit 3.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from engine.finetune.job import FinetuneEvent


def emit(kind: str, data: dict) -> None:
    print(FinetuneEvent(kind, data).to_line(), flush=True)


def progress(stage: str, step: int, total: int, eta: float) -> None:
    emit("progress", {"stage": stage, "step": step, "total": total, "eta_s": eta,
                      "metrics": {"total": 1.0 / step, "loss_ce": 0.5 / step}})


def main() -> int:
    mode = sys.argv[1]
    if mode == "ok":
        go, result = Path(sys.argv[2]), json.loads(sys.argv[3])
        for step in (1, 2, 3):
            progress("teacher", step, 3, 30.0 - step)
        print("some library chatter that is not an event", flush=True)
        emit("log", {"message": "teacher adapted on 12 patches"})
        for step in range(1, 6):
            progress("student", step, 5, 10.0 - step)
            if step in (2, 5):
                emit("eval", {"step": step, "heldout_miou": 0.5 + 0.05 * step})
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        emit("result", result)
        return 0
    if mode in ("forever", "stubborn"):
        stop = []
        if mode == "forever":
            signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        else:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        step = 0
        while not stop:
            step += 1
            progress("student", step, 10_000, 1000.0)
            time.sleep(0.05)
        emit("result", {"status": "cancelled", "version": None, "parent": "v0001", "before": {},
                        "after": {}, "activated": False, "seconds": 1.0,
                        "message": "cancelled: the registry is unchanged", "curves": {}})
        return 0
    if mode == "error":
        progress("data", 1, 1, 0.0)
        emit("error", {"message": "No correction ROIs on the chosen slides: draw some with O."})
        print("Traceback (most recent call last):\n  ...\nengine.errors.CocoPathError: no ROIs",
              file=sys.stderr, flush=True)
        return 2
    if mode == "crash":
        print("loading the student\nRuntimeError: boom", file=sys.stderr, flush=True)
        return 3
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
