"""modify / set_geometry / reclass / set_locked / remove compare against the state the caller saw:
a change another window or program committed meanwhile is reported (ConflictError), never
overwritten. Three real writer processes hammer the same few annotations; every edit either lands
(and is still there at the end) or is reported as a conflict, none is lost."""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

from engine.annotations import Annotation, Project, SlideRecord
from engine.annotations.errors import AnnotationError, ConflictError

WRITERS = 3
OPS = 250  # per writer
SHARED = 4  # annotations all writers edit


def _writer(folder: str, slide_id: int, uuids: list[str], seed: int, out: str) -> None:
    """Read an annotation, think a moment, then edit it from what was read; log the outcome."""
    rng = random.Random(seed)
    log: list[list] = []
    with Project.open(folder, author=f"writer-{seed}", quick_check=False) as project:
        store = project.store(slide_id)
        for n in range(OPS):
            uid = rng.choice(uuids)
            op = rng.choice(["modify", "geometry", "reclass"])
            token = f"w{seed}.{n}"
            try:
                cur = store.get(uid)
                time.sleep(rng.uniform(0, 0.004))  # another writer may commit meanwhile
                if op == "modify":
                    store.modify(cur.evolve(name=f"{cur.name} {token}"))
                elif op == "geometry":
                    store.set_geometry(cur, shapely.affinity.translate(cur.geometry, xoff=1))
                else:
                    store.reclass(cur, f"c{int(cur.class_name[1:]) + 1}")
                log.append([uid, op, token, "landed"])
            except ConflictError:
                log.append([uid, op, token, "conflict"])
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
                log.append([uid, op, token, f"error {type(exc).__name__}: {exc}"])
    Path(out).write_text(json.dumps(log))


def test_three_writers_lose_nothing(tmp_path: Path, small_svs: Path) -> None:
    folder = tmp_path / "p"
    with Project.create(folder) as project:
        slide: SlideRecord = project.add_slide(small_svs)
        anns = [Annotation(box(100 * i, 0, 100 * i + 50, 50), "c0") for i in range(SHARED)]
        project.store(slide).add(anns)
    uuids = [a.uuid for a in anns]
    ctx = multiprocessing.get_context("fork")
    logs = [tmp_path / f"w{i}.json" for i in range(WRITERS)]
    procs = [ctx.Process(target=_writer, args=(str(folder), slide.id, uuids, i, str(logs[i])))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = [e for f in logs for e in json.loads(f.read_text())]
    errors = [e for e in entries if e[3] not in ("landed", "conflict")]
    assert not errors, errors[:3]
    assert len(entries) == WRITERS * OPS
    with Project.open(folder) as project:
        final = {a.uuid: a for a in project.store(slide.id).annotations()}
    lost = 0
    for i, uid in enumerate(uuids):
        mine = [e for e in entries if e[0] == uid]
        landed = {op: [e[2] for e in mine if e[1] == op and e[3] == "landed"]
                  for op in ("modify", "geometry", "reclass")}
        refused = [e[2] for e in mine if e[1] == "modify" and e[3] == "conflict"]
        names = final[uid].name.split()
        # each modify appended its token to the name it read: a lost update drops a token
        lost += len(set(landed["modify"]) - set(names))
        assert sorted(names) == sorted(landed["modify"]), uid
        assert not set(refused) & set(names), "a refused edit was written"
        # each outline change moved the outline it read by 1 px; each reclass counted up by 1
        assert final[uid].geometry.bounds[0] == 100 * i + len(landed["geometry"])
        assert final[uid].class_name == f"c{len(landed['reclass'])}"
    assert lost == 0
    conflicts = sum(e[3] == "conflict" for e in entries)
    assert 0 < conflicts < len(entries), "the writers never met: the test proves little"


# -- one process, two windows: each kind of edit, from a stale copy -------------------------------

@pytest.fixture
def two(tmp_path: Path, small_svs: Path):
    folder = tmp_path / "p"
    with Project.create(folder) as p:
        slide = p.add_slide(small_svs)
    a, b = Project.open(folder, author="a"), Project.open(folder, author="b")
    yield a.store(slide.id), b.store(slide.id)
    a.close()
    b.close()


STALE_EDITS = {
    "modify": lambda s, seen: s.modify(seen.evolve(name="mine")),
    "modify-expected": lambda s, seen: s.modify(Annotation(box(0, 0, 5, 5), uuid=seen.uuid),
                                                expected=seen),
    "set_geometry": lambda s, seen: s.set_geometry(seen, box(0, 0, 3, 3)),
    "reclass": lambda s, seen: s.reclass([seen], "stroma"),
    "set_locked": lambda s, seen: s.set_locked(seen),
    "remove": lambda s, seen: s.remove(seen),
}


@pytest.mark.parametrize("edit", sorted(STALE_EDITS))
@pytest.mark.parametrize("meanwhile", ["reclass", "outline", "delete"])
def test_an_edit_from_a_stale_copy_is_a_conflict(two, edit: str, meanwhile: str) -> None:
    mine, theirs = two
    ann = Annotation(box(0, 0, 10, 10), "tumour")
    mine.add(ann)
    seen = mine.get(ann.uuid)
    if meanwhile == "reclass":
        theirs.reclass(ann.uuid, "necrosis")
    elif meanwhile == "outline":
        theirs.set_geometry(ann.uuid, box(0, 0, 20, 20))
    else:
        theirs.remove(ann.uuid)
    after_theirs = theirs.find(ann.uuid)
    steps = len(mine.steps())
    with pytest.raises(ConflictError, match="meanwhile") as exc:
        STALE_EDITS[edit](mine, seen)
    assert "\n" not in str(exc.value) and ann.uuid in str(exc.value)
    assert mine.find(ann.uuid) == after_theirs and len(mine.steps()) == steps


@pytest.mark.parametrize("edit", sorted(STALE_EDITS))
def test_an_edit_from_a_fresh_copy_lands(two, edit: str) -> None:
    mine, _ = two
    ann = Annotation(box(0, 0, 10, 10), "tumour")
    mine.add(ann)
    STALE_EDITS[edit](mine, mine.get(ann.uuid))
    assert len(mine.steps()) == 2


def test_edits_in_a_row_from_the_same_copy_chain(two) -> None:
    """After modify, the caller's object stands for the committed state: editing on from it is
    no conflict with one's own edit."""
    mine, _ = two
    ann = Annotation(box(0, 0, 10, 10), "tumour")
    mine.add(ann)
    cur = mine.get(ann.uuid).evolve(name="one")
    mine.modify(cur)
    nxt = cur.evolve(name="two")
    mine.modify(nxt)
    mine.set_geometry(nxt, box(0, 0, 4, 4))
    stored = mine.get(ann.uuid)
    assert stored.name == "two" and stored.area == 16
    step = mine.reclass(stored, "stroma")
    mine.set_locked(step.changes[0].after)  # a step's after state is what is stored
    assert mine.get(ann.uuid).locked and mine.get(ann.uuid).class_name == "stroma"


def test_uuid_forms_still_edit_what_is_stored_now(two) -> None:
    mine, theirs = two
    ann = Annotation(box(0, 0, 10, 10), "tumour")
    mine.add(ann)
    theirs.reclass(ann.uuid, "necrosis")
    mine.set_geometry(ann.uuid, box(0, 0, 4, 4))  # a uuid: no state was seen, nothing to compare
    stored = mine.get(ann.uuid)
    assert stored.class_name == "necrosis" and stored.area == 16  # their class kept
    with pytest.raises(AnnotationError, match="no annotation"):
        mine.reclass("00000000-0000-4000-8000-000000000000", "x")
