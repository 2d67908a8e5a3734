"""A fine-tuning round's subprocess, seen from the GUI thread: its events become Qt signals.

The round runs in its own process (``engine.api.finetune_argv`` gives the command line), so its
training never holds this process's GIL: the viewer keeps painting. :class:`FinetuneProcess`
starts it with a :class:`~PySide6.QtCore.QProcess` (no thread of ours: QProcess reads the pipes
in the event loop), lowers its CPU priority as soon as it runs (``nice`` +10; the threads it starts
later inherit that: a pan frame rarely waits for it — measured by ``cocopath --bench-training``),
parses each stdout line with
``engine.api.parse_event`` and emits it, keeps the tail of stderr, and reports how the process
ended (:class:`~app.state.training.RoundEnd`). Cancel terminates the process (SIGTERM, then SIGKILL
after a grace period); the engine publishes a version atomically, so a stopped round leaves the
registry as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from app.state.training import RoundEnd, TextTail, round_end

log = logging.getLogger(__name__)

KILL_AFTER_MS = 5000  # a terminated round that has not exited by then is killed
NICE = 10  # the round runs this much nicer than the GUI (lower CPU priority; see _yield_cpu)


def _default_parser(line: str) -> Any:
    from engine.api import parse_event

    return parse_event(line)


class FinetuneProcess(QObject):
    """One round at a time. ``event`` carries each parsed event (``kind`` and ``data``); ``ended``
    a :class:`RoundEnd` once the process has exited (or failed to start)."""

    event = Signal(object)  # FinetuneEvent
    started = Signal(int)  # the process id
    ended = Signal(object)  # RoundEnd

    def __init__(self, parent: QObject | None = None,
                 parse: Callable[[str], Any] | None = None) -> None:
        super().__init__(parent)
        self._parse = parse or _default_parser
        self._proc: QProcess | None = None
        self._buffer = b""
        self._stderr = TextTail()
        self._result: Mapping[str, Any] | None = None
        self._error: str | None = None
        self._cancelled = False
        self._reported = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)
        self.events_seen = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    @property
    def pid(self) -> int | None:
        return int(self._proc.processId()) if self.running else None  # type: ignore[union-attr]

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> bool:
        """Start ``argv`` (program and arguments); False when a round is still running."""
        if self.running or not argv:
            return False
        proc = QProcess(self)
        if env is not None:
            qenv = QProcessEnvironment.systemEnvironment()
            for k, v in env.items():
                qenv.insert(k, v)
            proc.setProcessEnvironment(qenv)
        if cwd:
            proc.setWorkingDirectory(cwd)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.started.connect(self._on_started)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        self._proc, self._buffer, self._stderr = proc, b"", TextTail()
        self._result = self._error = None
        self._cancelled = self._reported = False
        self.events_seen = 0
        log.info("fine-tuning: %s", " ".join(argv))
        proc.start(argv[0], list(argv[1:]))
        return True

    def cancel(self) -> None:
        """Stop the round: SIGTERM now, SIGKILL if it has not exited within a few seconds."""
        if not self.running:
            return
        self._cancelled = True
        self._proc.terminate()  # type: ignore[union-attr]
        self._kill_timer.start(KILL_AFTER_MS)

    def _kill(self) -> None:
        if self.running:
            log.warning("fine-tuning process did not stop after SIGTERM: killed")
            self._proc.kill()  # type: ignore[union-attr]

    def wait(self, ms: int = 10000) -> bool:
        """Block until the process has exited (closing the window); True when it has."""
        if self._proc is None or not self.running:
            return True
        return bool(self._proc.waitForFinished(ms))

    def shutdown(self) -> None:
        """The window closes: stop a running round and wait for it."""
        if self.running:
            self.cancel()
            if not self.wait(KILL_AFTER_MS):
                self._proc.kill()  # type: ignore[union-attr]
                self.wait(2000)

    # -- the process's output -------------------------------------------------------------------

    def _on_started(self) -> None:
        pid = self.pid
        if pid:
            _yield_cpu(pid)
            self.started.emit(pid)

    def _read_stdout(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._buffer += bytes(proc.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))

    def _read_stderr(self) -> None:
        proc = self._proc
        if proc is not None:
            self._stderr.add(bytes(proc.readAllStandardError().data()).decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            ev = self._parse(line)
        except Exception as exc:  # noqa: BLE001 - a garbled line is logged, never fatal
            log.warning("fine-tuning output not understood (%s): %s", exc, line[:200])
            return
        if ev is None:
            log.info("fine-tuning: %s", line[:500])
            return
        self.events_seen += 1
        if ev.kind == "result":
            self._result = dict(ev.data)
        elif ev.kind == "error":
            self._error = str(ev.data.get("message") or "the round failed")
        self.event.emit(ev)

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        if self._buffer.strip():
            self._line(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
        self._read_stderr()
        self._kill_timer.stop()
        crashed = status == QProcess.ExitStatus.CrashExit
        self._report(round_end(None if crashed else int(exit_code), crashed, self._cancelled,
                               self._result, self._error, self._stderr.text))

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            proc = self._proc
            why = proc.errorString() if proc is not None else "unknown error"
            self._report(RoundEnd("failed", None, None,
                                  f"The fine-tuning process could not be started ({why}).", ""))

    def _report(self, end: RoundEnd) -> None:
        if self._reported:
            return
        self._reported = True
        log.info("fine-tuning ended: %s %s", end.status, end.message)
        self.ended.emit(end)


def _yield_cpu(pid: int) -> None:
    """Make the round yield the CPU to the GUI: NICE below this process (threads the round starts
    later, torch's, inherit it). Not Linux's idle scheduling class, which the round once ran in: it
    gets CPU time only when no other process wants it, so any busy process, even one at nice 19,
    starved it (a round in the app on a machine running a nice-19 training took 2.2 s a step where
    it takes 0.22 s, and ended with 5 steps and nothing learnt)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE))
    except (AttributeError, OSError):  # not Linux/macOS, or not allowed: default priority
        pass
