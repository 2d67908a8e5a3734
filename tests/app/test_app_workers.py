"""The app's background-work helper: app.workers.Worker (typed signals, cancel, newest request
wins, shutdown after which nothing is emitted) over app.state.threads.Task."""

from __future__ import annotations

import os
import threading
import time

import pytest

from app.state.threads import Task
from app.workers import Worker
from engine.api import CocoPathError


@pytest.fixture
def worker(qtbot):
    w = Worker("test-worker")
    yield w
    w.shutdown(5)


def _record(w: Worker) -> list:
    seen: list = []
    w.started.connect(lambda: seen.append(("started", threading.current_thread().name)))
    w.progress.connect(lambda d, t: seen.append(("progress", d, t)))
    w.finished.connect(lambda v: seen.append(("finished", v, w.running)))
    w.failed.connect(lambda m: seen.append(("failed", m)))
    w.cancelled.connect(lambda: seen.append(("cancelled",)))
    w.ended.connect(lambda: seen.append(("ended", threading.current_thread().name)))
    return seen


def test_a_job_reports_progress_and_its_result_in_the_gui_thread(qtbot, worker):
    seen = _record(worker)
    names: list[str] = []

    def job(j):
        names.append(threading.current_thread().name)
        for i in range(3):
            j.progress(i + 1, 3)
        return 2**40  # a result of any type; progress counts past 2**31 too

    assert worker.start(job)
    assert worker.running
    with qtbot.waitSignal(worker.ended, timeout=5000):
        pass
    gui = threading.current_thread().name
    assert names == ["test-worker"]
    assert seen == [("started", gui), ("progress", 1, 3), ("progress", 2, 3), ("progress", 3, 3),
                    ("finished", 2**40, False), ("ended", gui)]
    assert not worker.running


def test_an_error_is_one_sentence_and_the_engine_s_own_is_kept(qtbot, worker):
    seen = _record(worker)

    def broken(_j):
        raise ValueError("bad\nvalue")

    with qtbot.waitSignal(worker.ended, timeout=5000):
        worker.start(broken)
    assert ("failed", "ValueError: bad value") in seen
    seen.clear()

    def refused(_j):
        raise CocoPathError("slide.svs: not a slide")

    with qtbot.waitSignal(worker.ended, timeout=5000):
        worker.start(refused)
    assert [s for s in seen if s[0] == "failed"] == [("failed", "slide.svs: not a slide")]


def test_cancel_is_cooperative(qtbot, worker):
    seen = _record(worker)
    go = threading.Event()

    def polls(j):
        go.wait(5)
        if j.cancelled:
            raise CocoPathError("stopped")
        return "done"

    worker.start(polls)
    worker.cancel()
    go.set()
    with qtbot.waitSignal(worker.ended, timeout=5000):
        pass
    assert [s[0] for s in seen if s[0] != "started"] == ["cancelled", "ended"]
    seen.clear()
    go.clear()

    def says_so(j):  # a job may also return what a cancelled result is
        go.wait(5)
        return "cancelled" if j.is_cancelled() else "done"

    worker.start(says_so)
    worker.cancel()
    go.set()
    with qtbot.waitSignal(worker.ended, timeout=5000):
        pass
    assert ("finished", "cancelled", False) in seen


def test_one_job_at_a_time_and_the_newest_request_wins(qtbot, worker):
    seen = _record(worker)
    release = threading.Event()
    ran: list[str] = []

    def slow(j):
        ran.append("slow")
        release.wait(5)
        return "slow"

    def make(name):
        def job(_j):
            ran.append(name)
            return name
        return job

    assert worker.start(slow)
    assert not worker.start(make("refused"))  # busy: start() refuses
    worker.submit(make("second"))
    worker.submit(make("third"))  # supersedes "second", which never runs
    release.set()
    qtbot.waitUntil(lambda: ("finished", "third", False) in seen, timeout=5000)
    assert ran == ["slow", "third"]
    assert [s[1] for s in seen if s[0] == "finished"] == ["third"]  # the stale result was dropped


def _stuck_job(release: threading.Event, ended: threading.Event, emit):
    def stuck(_j):
        release.wait(10)  # a slide read that does not return in time
        emit(1, 1)
        ended.set()
        return "late"
    return stuck


def test_nothing_is_emitted_after_shutdown_even_by_a_job_that_outlives_it(qtbot):
    w = Worker("outlives")
    seen = _record(w)
    release, ended = threading.Event(), threading.Event()
    w.start(_stuck_job(release, ended, w.emitter(w.progress)))
    qtbot.waitUntil(lambda: bool(seen), timeout=5000)  # started
    assert not w.shutdown(0.2)  # it did not end in time
    assert not w.start(lambda _j: "after") and w.running
    release.set()
    assert ended.wait(5)
    qtbot.wait(100)
    assert seen == [("started", threading.current_thread().name)]


def test_a_deleted_worker_is_never_emitted_on(qtbot):
    w = Worker("deleted")
    seen = _record(w)
    release, ended = threading.Event(), threading.Event()
    w.start(_stuck_job(release, ended, w.emitter(w.progress)))
    qtbot.waitUntil(lambda: bool(seen), timeout=5000)
    w.deleteLater()  # its window went away without shutting it down
    qtbot.wait(50)
    release.set()  # the job emits progress and ends: both must be no-ops, not a crash
    assert ended.wait(5)
    qtbot.wait(100)
    assert seen == [("started", threading.current_thread().name)]


def test_the_inference_run_thread_yields_to_the_gui(qtbot):
    from app.engine_bridge import InferenceBridge

    bridge = InferenceBridge()
    got: list = []
    bridge.worker.finished.connect(got.append)
    bridge.worker.start(lambda _j: (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
                                    len(os.sched_getaffinity(0))))
    qtbot.waitUntil(lambda: bool(got), timeout=5000)
    nice, cores = got[0]
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert nice == min(19, mine + 10)
    if len(os.sched_getaffinity(0)) > 1:
        assert cores == len(os.sched_getaffinity(0)) - 1  # one core left to the GUI thread
    bridge.shut_down(5)


def test_a_burst_may_use_every_core_and_the_thread_keeps_its_own_after():
    from app.state.threads import every_core, spare_a_core

    def burst() -> tuple[int, int, int, int]:
        spare_a_core()
        before = len(os.sched_getaffinity(0))
        with every_core() as n:
            inside = len(os.sched_getaffinity(0))
        return before, inside, n, len(os.sched_getaffinity(0))

    before, inside, n, after = Task(burst, name="burst").start().result(5)
    everyone = len(os.sched_getaffinity(0))
    assert inside == n == everyone  # threads made in the block may run on every core …
    assert after == before == max(1, everyone - 1)  # … and the run's thread is off the GUI's again


def test_a_task_keeps_its_result_or_its_error_and_may_outlive_the_interpreter_s_daemons():
    t = Task(lambda a, b: a + b, 2, 3, name="adds").start()
    assert t.result(5) == 5 and t.done and t.error is None
    boom = Task(lambda: 1 / 0, name="divides").start()
    with pytest.raises(ZeroDivisionError):
        boom.result(5)
    slow = Task(time.sleep, 0.2, name="trial", daemon=False)
    assert not slow._thread.daemon and slow.wait()  # a task never started is not waited for
    slow.start()
    assert not slow.wait(0.01) and slow.wait(5)


def test_lower_priority_adds_to_the_threads_own_niceness():
    """An app started with ``nice`` keeps its inference thread below the GUI: 10 is added to the
    thread's niceness (capped at 19), not set, which would raise a thread at nice 15 to 10."""
    from app.state.threads import lower_priority

    starts = [max(os.getpriority(os.PRIO_PROCESS, 0), n) for n in (5, 15)]  # the suite may run under nice
    seen: list[int] = []

    def job() -> None:
        tid = threading.get_native_id()
        for start in starts:  # lowering a thread's own priority needs no privilege
            os.setpriority(os.PRIO_PROCESS, tid, start)
            lower_priority()
            seen.append(os.getpriority(os.PRIO_PROCESS, tid))

    t = threading.Thread(target=job)
    t.start()
    t.join(5)
    assert seen == [min(19, n + 10) for n in starts]
