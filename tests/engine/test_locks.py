from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.locks import try_lock

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "run.lock"
    with try_lock(path) as first:
        assert first and path.read_text().strip().isdigit()  # the holder's pid, for a person looking
        with try_lock(path) as second:
            assert not second
    with try_lock(path) as again:
        assert again


def test_waiting_blocks_until_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    got: list[float] = []

    def waiter() -> None:
        with try_lock(path, wait=True) as held:
            got.append(time.monotonic() if held else -1.0)

    with try_lock(path):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        assert not got  # still waiting
        released = time.monotonic()
    thread.join(10)
    assert got and got[0] >= released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    code = ("import sys, time; from engine.locks import try_lock\n"
            f"with try_lock({str(path)!r}) as held:\n"
            "    print(held, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "True"
        with try_lock(path) as held:
            assert not held  # another process has it
    finally:
        child.kill()
        child.wait()
    with try_lock(path) as held:
        assert held  # the kernel dropped it with the process: nothing to clean up
