"""The project store: values, CRUD, classes, slides and relinking, R*Tree queries, the journal."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Polygon, box

from engine.annotations import (Annotation, AnnotationClass, AnnotationError, Kind, Project,
                                ProjectCorruptError, ProjectError, ProjectLockedError,
                                ProjectMissingError, SlideRecord, Source)

Star = Callable[..., Polygon]

# -- values ------------------------------------------------------------------------------------


def test_annotation_geometry_is_made_valid_and_polygonal() -> None:
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    a = Annotation(bowtie, "tumour")
    assert isinstance(a.geometry, MultiPolygon) and a.geometry.is_valid
    assert a.area == pytest.approx(50.0)
    mixed = GeometryCollection([box(0, 0, 2, 2), LineString([(5, 5), (9, 9)])])
    assert Annotation(mixed).geometry.equals(box(0, 0, 2, 2))
    assert Annotation(box(0, 0, 1, 1), uuid="3F2504E0-4F89-11D3-9A0C-0305E82C3301").uuid == \
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kwargs, message", [
    ({"geometry": LineString([(0, 0), (5, 5)])}, "area"),
    ({"geometry": Polygon([(0, 0), (1, 1), (2, 2)])}, "area"),
    ({"geometry": box(0, 0, 1, 1), "uuid": "not-a-uuid"}, "UUID"),
    ({"geometry": lambda: Polygon([(0, 0), (float("nan"), 1), (1, 0)])}, "finite"),
    ({"geometry": box(0, 0, 1, 1), "kind": Kind.ROI, "class_name": "tumour"}, "ROI"),
    ({"geometry": box(0, 0, 1, 1), "class_name": "  "}, "class"),
    ({"geometry": box(0, 0, 1, 1), "created": float("inf")}, "time"),
    ({"geometry": "POLYGON"}, "shapely"),
])
def test_invalid_annotations_are_refused(kwargs: dict, message: str) -> None:
    kwargs = {k: v() if callable(v) else v for k, v in kwargs.items()}
    with pytest.raises(AnnotationError, match=message):
        Annotation(**kwargs)


def test_annotation_class_is_validated() -> None:
    with pytest.raises(AnnotationError):
        AnnotationClass("")
    with pytest.raises(AnnotationError):
        AnnotationClass("tumour", (256, 0, 0))
    assert AnnotationClass("tumour", (1, 2, 3), "1").shortcut == "1"


# -- CRUD ----------------------------------------------------------------------------------------


def test_add_get_modify_reclass_remove(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a = Annotation(box(10, 10, 50, 40), "tumour")
    store.add(a)
    got = store.get(a.uuid)
    assert got.geometry.equals(a.geometry) and got.class_name == "tumour"
    assert got.author == "dr-test" and got.source is Source.PATHOLOGIST
    assert project.class_named("tumour") is not None  # created on first use
    store.set_geometry(a.uuid, box(0, 0, 100, 100))
    changed = store.get(a.uuid)
    assert changed.area == 10000 and changed.modified >= changed.created
    store.reclass(a.uuid, "stroma")
    assert store.get(a.uuid).class_name == "stroma"
    m = Annotation(box(200, 200, 300, 300), "tumour", source=Source.MODEL, author="student-v3")
    store.add(m)
    assert store.count() == 2 and store.get(m.uuid).source is Source.MODEL
    assert store.get(m.uuid).author == "student-v3"
    store.remove(a.uuid)
    assert store.find(a.uuid) is None and store.count() == 1
    with pytest.raises(AnnotationError, match="no annotation"):
        store.get(a.uuid)


def test_rois_are_kept_apart_from_regions(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    roi = Annotation(box(0, 0, 1000, 1000), kind=Kind.ROI)
    region = Annotation(box(10, 10, 20, 20), "tumour")
    store.add([roi, region])
    assert [a.uuid for a in store.rois()] == [roi.uuid]
    assert [a.uuid for a in store.annotations()] == [region.uuid]
    assert len(store.annotations(kind=None)) == 2 and store.count(kind=None) == 2
    assert [a.uuid for a in store.query(500, 500, 600, 600, kind=Kind.ROI)] == [roi.uuid]


def test_locked_annotations_refuse_changes(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a = Annotation(box(0, 0, 10, 10), "tumour")
    store.add(a)
    store.set_locked(a.uuid)
    for edit in (lambda: store.remove(a.uuid), lambda: store.reclass(a.uuid, "stroma"),
                 lambda: store.set_geometry(a.uuid, box(0, 0, 5, 5))):
        with pytest.raises(AnnotationError, match="locked"):
            edit()
    assert store.get(a.uuid).geometry.equals(a.geometry)
    store.set_locked(a.uuid, False)
    store.remove(a.uuid)
    assert store.count() == 0


def test_one_edit_is_all_or_nothing(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a = Annotation(box(0, 0, 10, 10))
    store.add(a)
    b = Annotation(box(20, 20, 30, 30))
    with pytest.raises(AnnotationError, match="already exists"):
        store.edit([(None, b), (None, a)], "add two, one a duplicate")
    assert store.find(b.uuid) is None and store.count() == 1
    assert len(store.steps()) == 1


def test_classes_and_shortcuts(project: Project, slide: SlideRecord) -> None:
    project.set_class(AnnotationClass("tumour", (200, 0, 0), "1"))
    project.set_class(AnnotationClass("stroma", (0, 0, 200), "2"))
    with pytest.raises(AnnotationError, match="shortcut"):
        project.set_class(AnnotationClass("necrosis", (0, 0, 0), "1"))
    project.set_class(AnnotationClass("tumour", (255, 0, 0), "t"))
    assert [(c.name, c.color, c.shortcut) for c in project.classes()] == [
        ("tumour", (255, 0, 0), "t"), ("stroma", (0, 0, 200), "2")]
    project.store(slide).add(Annotation(box(0, 0, 5, 5), "stroma"))
    with pytest.raises(AnnotationError, match="used by 1"):
        project.remove_class("stroma")
    project.remove_class("tumour")
    assert [c.name for c in project.classes()] == ["stroma"]


# -- slides ----------------------------------------------------------------------------------------


def test_slides_are_added_once_and_found_by_reference(project: Project, small_svs: Path,
                                                      no_mpp_svs: Path) -> None:
    a = project.add_slide(small_svs)
    assert project.add_slide(small_svs).id == a.id
    b = project.add_slide(no_mpp_svs)
    assert (a.width, a.height, a.mpp) == (2220, 2967, (0.499, 0.499))
    assert b.mpp is None and b.size == no_mpp_svs.stat().st_size
    assert project.slide(str(a.id)) == a == project.slide(a.name) == project.slide(small_svs)
    with pytest.raises(ProjectError, match="add-slide"):
        project.slide("other.svs")


def test_moved_slides_are_relinked_by_hash(project: Project, small_svs: Path, no_mpp_svs: Path,
                                           tmp_path: Path) -> None:
    first = tmp_path / "a" / "case.svs"
    first.parent.mkdir()
    shutil.copy(small_svs, first)
    rec = project.add_slide(first)
    project.store(rec).add(Annotation(box(0, 0, 10, 10), "tumour"))
    moved = tmp_path / "b" / "deep" / "renamed.svs"
    moved.parent.mkdir(parents=True)
    first.rename(moved)
    assert [s.id for s in project.missing_slides()] == [rec.id]
    with pytest.raises(ProjectError, match="content differs"):
        project.relink_slide(rec, no_mpp_svs)
    assert [s.path for s in project.relink_missing([tmp_path])] == [str(moved)]
    assert project.missing_slides() == [] and project.store(rec).count() == 1
    assert project.slide(moved).id == rec.id  # and it is found by its new path


# -- spatial queries ---------------------------------------------------------------------------


def test_rtree_query_matches_brute_force(project: Project, slide: SlideRecord,
                                         rng: np.random.Generator, star: Star) -> None:
    store = project.store(slide)
    anns = [Annotation(star(rng, *rng.uniform(0, 10_000, 2), rng.uniform(5, 400)), "t")
            for _ in range(400)]
    store.add(anns)
    for _ in range(60):
        x0, y0 = rng.uniform(-500, 10_000, 2)
        x1, y1 = x0 + rng.uniform(1, 3000), y0 + rng.uniform(1, 3000)
        window = box(x0, y0, x1, y1)
        expected = {a.uuid for a in anns if a.geometry.intersects(window)}
        assert {a.uuid for a in store.query(x0, y0, x1, y1)} == expected
        by_box = {a.uuid for a in anns if box(*a.geometry.bounds).intersects(window)}
        assert {a.uuid for a in store.query(x0, y0, x1, y1, exact=False)} == by_box


def test_rtree_follows_edits_and_undo(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a = Annotation(box(0, 0, 10, 10))
    store.add(a)
    store.set_geometry(a.uuid, box(1000, 1000, 1010, 1010))
    assert store.query(0, 0, 20, 20) == [] and len(store.query(1000, 1000, 1001, 1001)) == 1
    store.undo()
    assert len(store.query(0, 0, 20, 20)) == 1 and store.query(1000, 1000, 1001, 1001) == []
    store.remove(a.uuid)
    assert project.query("SELECT count(*) FROM annotation_index")[0][0] == 0


# -- journal ---------------------------------------------------------------------------------------


def _state(project: Project, slide: SlideRecord) -> dict[str, Annotation]:
    return {a.uuid: a for a in project.store(slide).annotations(kind=None)}


def test_undo_redo_is_unlimited_and_survives_reopen(tmp_path: Path, small_svs: Path,
                                                    rng: np.random.Generator, star: Star) -> None:
    folder = tmp_path / "p"
    states = []
    with Project.create(folder, author="alice") as project:
        slide = project.add_slide(small_svs)
        store = project.store(slide)
        states.append(_state(project, slide))
        uuids: list[str] = []
        for i in range(40):
            op = i % 5
            if op in (0, 1) or not uuids:
                a = Annotation(star(rng, *rng.uniform(0, 2000, 2), 50), "tumour")
                store.add(a)
                uuids.append(a.uuid)
            elif op == 2:
                store.set_geometry(uuids[-1], star(rng, *rng.uniform(0, 2000, 2), 80))
            elif op == 3:
                store.reclass(uuids[0], "stroma" if i % 2 else "tumour")
            else:
                store.remove(uuids.pop(0))
            states.append(_state(project, slide))
    with Project.open(folder, author="bob") as project:
        store = project.store(1)
        assert _state(project, store.slide) == states[-1]
        for expected in reversed(states[:-1]):
            assert store.undo() is not None
            assert _state(project, store.slide) == expected
        assert store.undo() is None and not store.can_undo()
    with Project.open(folder, author="carol") as project:
        store = project.store(1)
        for expected in states[1:21]:
            assert store.redo() is not None
            assert _state(project, store.slide) == expected
        store.add(Annotation(box(0, 0, 1, 1)))  # a new edit drops the redo branch
        assert not store.can_redo()
        assert len(store.steps("discarded")) == 20 and len(store.steps("applied")) == 21
        history = store.history()
        assert (history[0].action, history[0].author) == ("do", "carol")
        assert {(h.action, h.author) for h in history} >= {("do", "alice"), ("undo", "bob"),
                                                           ("redo", "carol")}
        assert history[-1].ops[0][0] == "add" and history[-1].at <= time.time()
        first = history[-1].ops[0][1]
        trail = store.annotation_history(first)
        assert [(t.action, t.author, t.ops[0][0]) for t in trail][:2] == [("do", "alice", "add"),
                                                                           ("do", "alice", "reclass")]
        assert ("undo", "bob", "add") in [(t.action, t.author, t.ops[0][0]) for t in trail]


def test_compound_edit_undoes_in_one_step(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a, b = Annotation(box(0, 0, 10, 10), "t"), Annotation(box(5, 0, 20, 10), "t")
    a, b = (c.after for c in store.add([a, b]).changes)  # as stored: author stamped
    assert a is not None and b is not None and a.author == "dr-test"
    merged = Annotation(a.geometry.union(b.geometry), "t")
    step = store.edit([(a, None), (b, None), (None, merged)], "merge")
    assert [c.op for c in step.changes] == ["remove", "remove", "add"]
    assert [x.uuid for x in store.annotations()] == [merged.uuid]
    assert store.undo_label() == "merge"
    store.undo()
    assert {x.uuid for x in store.annotations()} == {a.uuid, b.uuid}
    assert store.redo_label() == "merge"


def test_stale_edits_are_refused(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    a = Annotation(box(0, 0, 10, 10), "t")
    store.add(a)
    store.reclass(a.uuid, "s")
    with pytest.raises(AnnotationError, match="changed meanwhile"):
        store.edit([(a, a.evolve(geometry=box(0, 0, 3, 3)))], "from an old copy")


# -- opening errors --------------------------------------------------------------------------------


def test_missing_and_non_projects_are_named(tmp_path: Path) -> None:
    with pytest.raises(ProjectMissingError, match="no such project folder"):
        Project.open(tmp_path / "nothing")
    with pytest.raises(ProjectMissingError, match="not a CoCoPath project"):
        Project.open(tmp_path)
    Project.create(tmp_path / "p").close()
    with pytest.raises(ProjectError, match="already holds"):
        Project.create(tmp_path / "p")


def test_corrupt_and_foreign_databases_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "project.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ProjectCorruptError, match="damaged"):
        Project.open(garbage)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / "project.sqlite")
    conn.execute("CREATE TABLE x (y)")
    conn.close()
    with pytest.raises(ProjectCorruptError, match="not a CoCoPath project"):
        Project.open(foreign)


def test_truncated_database_is_named(tmp_path: Path, small_svs: Path,
                                     rng: np.random.Generator, star: Star) -> None:
    with Project.create(tmp_path / "p") as project:
        store = project.store(project.add_slide(small_svs))
        store.add([Annotation(star(rng, 500, 500, 300, 400)) for _ in range(50)])
        project.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = tmp_path / "p" / "project.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProjectCorruptError):
        with Project.open(tmp_path / "p") as project:
            project.store(1).annotations()


def test_locked_database_gives_a_clear_error(tmp_path: Path, small_svs: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        project.add_slide(small_svs)
    other = sqlite3.connect(tmp_path / "p" / "project.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ProjectLockedError, match="busy"):
            with Project.open(tmp_path / "p", timeout=0.2) as project:
                project.store(1).add(Annotation(box(0, 0, 1, 1)))
    finally:
        other.execute("ROLLBACK")
        other.close()
    with Project.open(tmp_path / "p") as project:
        project.store(1).add(Annotation(box(0, 0, 1, 1)))
        assert project.store(1).count() == 1


def test_dicom_folders_and_lookups_by_content(project: Project, dicom_dir: Path, small_svs: Path,
                                              tmp_path: Path) -> None:
    rec = project.add_slide(dicom_dir)
    assert rec.hash.startswith("sha256-dir:") and rec.mpp == (0.499, 0.499)
    assert project.add_slide(next(dicom_dir.glob("*.dcm"))) == rec  # any .dcm: the same slide
    svs = project.add_slide(small_svs)
    twin = tmp_path / "same-content-elsewhere.svs"
    twin.write_bytes(small_svs.read_bytes())
    assert project.slide(twin).id == svs.id  # found by content, not by name
    other = tmp_path / "cmu-1-small-region.svs"  # same name, other content
    other.write_bytes(b"not that slide")
    with pytest.raises(ProjectError, match="not a slide of the project"):
        project.slide(other)


def test_damaged_geometry_rows_are_named(project: Project, slide: SlideRecord) -> None:
    store = project.store(slide)
    store.add(Annotation(box(0, 0, 10, 10)))
    with project.transaction() as c:
        c.execute("UPDATE annotations SET geometry = x'0103'")
    with pytest.raises(ProjectCorruptError, match="damaged"):
        store.annotations()
    with pytest.raises(ProjectCorruptError, match="damaged"):
        store.query(0, 0, 5, 5)


def test_reads_from_threads_never_see_half_an_edit(project: Project, slide: SlideRecord) -> None:
    import threading

    store = project.store(slide)
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                found = store.query(0, 0, 10_000, 10_000)
                assert len(found) % 40 == 0  # edits add 40 at a time: never part of one
                seen.append(len(found))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(15):
        store.add([Annotation(box(i * 10, k * 10, i * 10 + 5, k * 10 + 5)) for k in range(40)])
    done.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[0]
    assert store.count() == 600 and seen and max(seen) <= 600
