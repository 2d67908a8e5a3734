"""Never lose a committed edit: a writer process is SIGKILLed at random moments, 100 times.

The writer adds, modifies and deletes annotations and prints one line after each commit returns.
After each kill the database must open (integrity checked) and hold every edit the writer reported:
each added annotation exists unless reported deleted, each deleted one is gone, and each modified
one is at the reported version or a later one (a commit may land between the last report and the
kill; nothing reported may be missing). A deletion is announced before it starts, so one committed
in that window is recognised rather than taken for a lost addition.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import time
from pathlib import Path

from shapely.geometry import box

from engine.annotations import Annotation, Project, SlideRecord

KILLS = 100


def _writer(folder: str, slide_id: int, fd: int, seed: int) -> None:  # runs in the child process
    out = os.fdopen(fd, "w", buffering=1)
    rng = random.Random(seed)
    project = Project.open(folder, author=f"writer-{seed}", quick_check=False)
    store = project.store(slide_id)
    uuids = [a.uuid for a in store.annotations()]
    out.write("ready\n")
    while True:
        if not uuids or rng.random() < 0.5:
            x, y = rng.uniform(0, 2000), rng.uniform(0, 2000)
            a = Annotation(box(x, y, x + rng.uniform(1, 50), y + rng.uniform(1, 50)), "tumour",
                           name="v0")
            store.add(a)
            uuids.append(a.uuid)
            out.write(f"add {a.uuid}\n")
        elif rng.random() < 0.15:
            uid = uuids.pop(rng.randrange(len(uuids)))
            out.write(f"deleting {uid}\n")  # a kill may land after the commit, before the report
            store.remove(uid)
            out.write(f"del {uid}\n")
        else:
            uid = rng.choice(uuids)
            cur = store.get(uid)
            version = int(cur.name[1:]) + 1
            x, y = rng.uniform(0, 2000), rng.uniform(0, 2000)
            if rng.random() < 0.5:
                store.modify(cur.evolve(name=f"v{version}", geometry=box(x, y, x + 9, y + 9)))
            else:
                store.modify(cur.evolve(name=f"v{version}", class_name=rng.choice(["a", "b"])))
            out.write(f"mod {uid} {version}\n")


def _until_ready(fd: int, i: int, timeout: float = 20.0) -> bytes:
    """Read the writer's output until its "ready" line; what was read is returned."""
    buf, deadline = b"", time.monotonic() + timeout
    while b"ready\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"kill {i}: writer never ready"
        chunk = os.read(fd, 4096)
        assert chunk, f"kill {i}: the writer died before it was ready"
        buf += chunk
    return buf


def test_sigkilled_writer_never_loses_a_reported_edit(tmp_path: Path, small_svs: Path) -> None:
    folder = tmp_path / "p"
    with Project.create(folder) as project:
        slide: SlideRecord = project.add_slide(small_svs)
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(7)
    added: set[str] = set()
    removed: set[str] = set()
    versions: dict[str, int] = {}
    reported_total = 0
    started = time.monotonic()
    for i in range(KILLS):
        r, w = os.pipe()
        child = ctx.Process(target=_writer, args=(str(folder), slide.id, w, i), daemon=True)
        child.start()
        os.close(w)
        head = _until_ready(r, i)  # kill while it writes, not while Python starts
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, f"kill {i}: the writer ended by itself"
        with os.fdopen(r, "rb") as pipe:
            text = (head + pipe.read()).decode()
        deleting: set[str] = set()
        for line in text.split("\n")[:-1]:  # the last piece is "" or a line cut by the kill
            parts = line.split()
            if parts[0] == "ready":
                continue
            if parts[0] == "deleting":
                deleting.add(parts[1])
            elif parts[0] == "add":
                added.add(parts[1])
                versions.setdefault(parts[1], 0)
            elif parts[0] == "del":
                removed.add(parts[1])
            else:
                versions[parts[1]] = max(versions.get(parts[1], 0), int(parts[2]))
            reported_total += 1
        with Project.open(folder) as project:  # opens; quick_check passes
            stored = {a.uuid: a for a in project.store(slide.id).annotations()}
        removed |= deleting - stored.keys()  # deleted, committed, killed before the report
        missing = added - removed - stored.keys()
        assert not missing, f"kill {i}: reported additions lost: {sorted(missing)[:3]}"
        assert not removed & stored.keys(), f"kill {i}: reported deletions undone"
        stale = [u for u, v in versions.items() if u not in removed and int(stored[u].name[1:]) < v]
        assert not stale, f"kill {i}: reported modifications lost for {stale[:3]}"
    assert reported_total > 2 * KILLS, "the writer hardly got to write; the test proves little"
    assert time.monotonic() - started < 90
