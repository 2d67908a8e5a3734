"""``python -m engine.background`` runs a command in a session of its own at the lowest priority,
and a signal to it still stops the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import os; print(os.getsid(0), os.getpriority(os.PRIO_PROCESS, 0)); "
         "p = '/proc/self/autogroup'; print(open(p).read().strip() if os.path.exists(p) else 'none')")


def _background(*cmd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.background", *cmd], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_command_runs_in_its_own_session_at_nice_19() -> None:
    proc = _background(sys.executable, "-c", PROBE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    sid_line, group = out.splitlines()
    sid, nice = map(int, sid_line.split())
    assert sid != os.getsid(0) and nice == 19
    if group != "none":  # a kernel with autogroups: the session's group is at nice 19 too, or it says why not
        assert group.endswith("nice 19") or "autogroup stays as it was" in err, (group, err)


def test_its_exit_status_is_the_commands_and_a_missing_command_is_said() -> None:
    proc = _background(sys.executable, "-c", "raise SystemExit(3)")
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    proc = _background("/nonexistent/cocopath-command")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 127 and "/nonexistent/cocopath-command" in err
    proc = _background()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "usage" in err


def test_a_signal_to_it_stops_the_command() -> None:
    proc = _background(sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)")
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the command outlived the signal")
