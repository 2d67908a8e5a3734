"""Hostile and broken inputs at the annotation readers, writers and the project database (issue 13):
each is refused with one sentence naming the file, never a traceback, a hang or a half-written file.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

import engine.annotations.reading as reading
from engine.annotations import Annotation, Project
from engine.annotations.errors import (AnnotationError, AnnotationFormatError,
                                       ProjectCorruptError, ProjectError)
from engine.annotations.formats import export_file, import_file, read_annotations
from engine.annotations.geojson_io import write_geojson
from engine.annotations.model import MAX_COORDINATE
from engine.cli import main
from engine.errors import FileProblem
from engine.files import read_regular, regular_file

ENGINE_ANNOTATIONS = Path(__file__).resolve().parents[3] / "engine" / "annotations"


def one_line(exc: BaseException, path: Path | str) -> str:
    text = str(exc)
    assert str(path) in text and "\n" not in text, text
    return text


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cocopath-engine: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of hanging forever (a FIFO that is opened blocks until a writer comes)."""
    def fail(*_: object) -> None:
        raise TimeoutError("hung for 10 s: a special file was opened")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- 1. XML in an encoding nobody knows ----------------------------------------------------------

@pytest.mark.parametrize("root", ["ASAP_Annotations", "Annotations"])
@pytest.mark.parametrize("encoding", ["x-klingon", "utf-99", "\u00e9\u00e9", "a" * 300])
def test_unknown_xml_encoding_is_one_line(tmp_path: Path, root: str, encoding: str) -> None:
    path = tmp_path / "enc.xml"
    path.write_bytes(f'<?xml version="1.0" encoding="{encoding}"?><{root}/>'.encode("utf-8"))
    with pytest.raises(AnnotationFormatError, match="encoding") as exc:
        read_annotations(path)
    one_line(exc.value, path)


def test_unknown_encoding_at_the_cli(tmp_path: Path, small_svs: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with Project.create(tmp_path / "p") as project:
        project.add_slide(small_svs)
    path = tmp_path / "enc.xml"
    path.write_bytes(b'<?xml version="1.0" encoding="x-klingon"?><Annotations/>')
    err = cli_error(capsys, "annotations", "import", str(tmp_path / "p"), "1", str(path))
    assert str(path) in err and "x-klingon" in err


# -- 2. coordinates that are no positions ---------------------------------------------------------

def _geojson(coords: list, n_before: int = 0) -> str:
    ok = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [10, 10], [0, 0]]]}, "properties": {}}
    bad = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
           "properties": {}}
    return json.dumps({"type": "FeatureCollection", "features": [ok] * n_before + [bad]})


BAD_NUMBERS = ["1e308", "-1e308", "NaN", "Infinity", "-Infinity", "1e400", "10000001",
               "-10000000.5", "1" + "0" * 400]


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_geojson_absurd_coordinates_are_refused_with_the_feature(tmp_path: Path,
                                                                 value: str) -> None:
    path = tmp_path / "bad.geojson"
    text = _geojson([[0, 0], ["X", 0], ["X", "X"], [0, 0]], n_before=12).replace('"X"', value)
    path.write_text(text)
    with pytest.raises(AnnotationFormatError) as exc:
        read_annotations(path)
    msg = one_line(exc.value, path)
    assert "feature 12" in msg and "position 1" in msg and "not a finite position" in msg


def test_the_largest_sane_coordinates_still_import(tmp_path: Path) -> None:
    path = tmp_path / "edge.geojson"
    m = MAX_COORDINATE
    path.write_text(_geojson([[-m, -m], [m, -m], [m, m], [-m, -m]]))
    (ann,) = read_annotations(path).annotations
    assert ann.area == pytest.approx(2 * m * m)


@pytest.mark.parametrize("value", ["1e308", "-inf", "nan", "1e999", "12345678"])
def test_asap_absurd_coordinates_are_refused_with_the_vertex(tmp_path: Path, value: str) -> None:
    path = tmp_path / "bad.xml"
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>'
                     for i, (x, y) in enumerate([(0, 0), (10, 0), (10, value), (0, 10)]))
    path.write_text(f'<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon">'
                    f'<Coordinates>{coords}</Coordinates></Annotation><Annotation Name="b" '
                    f'Type="Polygon"><Coordinates>{coords}</Coordinates></Annotation>'
                    f'</Annotations></ASAP_Annotations>')
    with pytest.raises(AnnotationFormatError) as exc:
        read_annotations(path)
    msg = one_line(exc.value, path)
    assert "annotation 0 coordinate 2 Y" in msg and "not a finite position" in msg


@pytest.mark.parametrize("value", ["1e308", "-1e308", "inf", "NaN", "2e7"])
def test_imagescope_absurd_coordinates_are_refused_with_the_vertex(tmp_path: Path,
                                                                  value: str) -> None:
    path = tmp_path / "bad.xml"
    vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(0, 0), (value, 0), (10, 10)])
    path.write_text(f'<Annotations><Annotation Id="1"><Regions><Region Id="1" Type="0">'
                    f'<Vertices>{vertices}</Vertices></Region></Regions></Annotation>'
                    f'</Annotations>')
    with pytest.raises(AnnotationFormatError) as exc:
        read_annotations(path)
    msg = one_line(exc.value, path)
    assert "region 0 vertex 1 X" in msg and "not a finite position" in msg


def test_an_annotation_refuses_absurd_coordinates() -> None:
    for shape in (box(0, 0, 1e308, 1e308), box(0, 0, 2e7, 1), box(-1e300, 0, 0, 1)):
        with pytest.raises(AnnotationError, match="finite positions"):
            Annotation(shape)


def _poisoned(uuid: str = "7a4e3c9a-0000-4000-8000-000000000001") -> Annotation:
    """An annotation with infinite area, as a CoCoPath before this check could have stored."""
    return Annotation.from_store(box(0, 0, 1e308, 1e308), "tumour", uuid, "region", "pathologist",
                                 "", "", 0.0, 0.0, False)


def test_geojson_writer_never_writes_nan_or_infinity(tmp_path: Path) -> None:
    out = tmp_path / "out.geojson"
    out.write_text("old")
    with pytest.raises(AnnotationError, match="not a finite number") as exc:
        write_geojson(out, [_poisoned()], [])
    one_line(exc.value, out)
    assert out.read_text() == "old" and _leftovers(tmp_path, "out.geojson") == []


def test_export_leaves_out_stored_absurd_annotations_and_stays_strict(
        project: Project, slide, tmp_path: Path) -> None:
    store = project.store(slide)
    good = Annotation(box(0, 0, 100, 100), "tumour")
    store.add(good)
    poisoned = _poisoned()
    with project.transaction() as c:  # as an older CoCoPath stored it, unchecked
        from engine.annotations import records
        records.insert(c, slide.id, poisoned)
    out = tmp_path / "e.geojson"
    result = export_file(store, out)
    assert result.count == 1 and any(poisoned.uuid in w for w in result.warnings)

    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} in the file")
    doc = json.loads(out.read_text(), parse_constant=refuse)  # strict, as QuPath reads it
    assert [f["id"] for f in doc["features"]] == [good.uuid]
    asap = export_file(store, tmp_path / "e.xml")
    assert asap.count == 1 and "inf" not in (tmp_path / "e.xml").read_text()


def test_every_json_writer_of_the_annotation_engine_is_strict() -> None:
    """Every json.dump/json.dumps call in engine/annotations says allow_nan=False."""
    calls = 0
    for source in ENGINE_ANNOTATIONS.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
                calls += 1
                strict = [k for k in node.keywords if k.arg == "allow_nan"
                          and isinstance(k.value, ast.Constant) and k.value.value is False]
                assert strict, f"{source.name}:{node.lineno}: json.{node.func.attr} without " \
                               f"allow_nan=False"
    assert calls >= 3


# -- 4. special files and huge files ---------------------------------------------------------------

def _special_files(tmp_path: Path) -> list[tuple[Path, str]]:
    fifo = tmp_path / "pipe.geojson"
    os.mkfifo(fifo)
    link = tmp_path / "link.xml"
    link.symlink_to(fifo)
    folder = tmp_path / "folder.geojson"
    folder.mkdir()
    return [(fifo, "FIFO"), (link, "FIFO"), (Path("/dev/zero"), "device"),
            (Path("/dev/null"), "device"), (folder, "folder"),
            (tmp_path / "missing.geojson", "does not exist")]


def test_special_files_are_refused_before_they_are_opened(tmp_path: Path, no_hang: None) -> None:
    for path, what in _special_files(tmp_path):
        for fmt in (None, "geojson", "asap", "imagescope"):
            with pytest.raises(FileProblem, match=what) as exc:
                read_annotations(path, fmt)
            one_line(exc.value, path)


def test_a_fifo_at_the_cli_is_one_line(tmp_path: Path, small_svs: Path, no_hang: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with Project.create(tmp_path / "p") as project:
        project.add_slide(small_svs)
    fifo = tmp_path / "in.geojson"
    os.mkfifo(fifo)
    err = cli_error(capsys, "annotations", "import", str(tmp_path / "p"), "1", str(fifo))
    assert "FIFO" in err and str(fifo) in err


def test_files_above_the_limit_are_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    huge = tmp_path / "huge.geojson"
    with open(huge, "wb") as fh:  # sparse: 8 GiB on paper, nothing on disk
        fh.truncate(8 << 30)
    reads: list[int] = []
    real = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real(fd, n))
    with pytest.raises(FileProblem, match=r"is 8 GiB; the limit for annotation files is 1 GiB"):
        read_annotations(huge)
    assert reads == []
    monkeypatch.setattr(reading, "MAX_FILE_BYTES", 1000)
    small = tmp_path / "small.geojson"
    small.write_text(_geojson([[0, 0], [1, 0], [1, 1], [0, 0]]) + " " * 2000)
    with pytest.raises(FileProblem, match="limit for annotation files is 1000 bytes"):
        read_annotations(small)


def test_regular_file_helper(tmp_path: Path, no_hang: None) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"12345")
    assert regular_file(ok, "texts") == ok and read_regular(ok, "texts", 5) == b"12345"
    with pytest.raises(FileProblem, match="is 5 bytes; the limit for texts is 4 bytes"):
        read_regular(ok, "texts", 4)
    for path, what in _special_files(tmp_path):
        with pytest.raises(FileProblem, match=what):
            regular_file(path, "texts")
        with pytest.raises(FileProblem, match=what):
            read_regular(path, "texts", 100)
    with pytest.raises(FileProblem, match="part of the path is not a folder"):
        regular_file(ok / "x", "texts")


# -- 5. project creation on a full disk -----------------------------------------------------------

class _FullAfter:
    """sqlite3.connect whose connections fail like a full disk at the n-th statement."""

    def __init__(self, n: int, message: str = "database or disk is full") -> None:
        self.n, self.message, self.count = n, message, 0
        self.real = sqlite3.connect
        outer = self

        class Conn(sqlite3.Connection):
            def execute(self, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
                outer.count += 1
                if outer.count == outer.n:
                    raise sqlite3.OperationalError(outer.message)
                return super().execute(*args)  # type: ignore[arg-type]

        self.conn = Conn

    def __call__(self, *args: object, **kwargs: object) -> sqlite3.Connection:
        return self.real(*args, factory=self.conn, **kwargs)  # type: ignore[arg-type]


def test_project_create_on_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    statements = 0
    for n in range(1, 100):
        full = _FullAfter(n)
        monkeypatch.setattr(sqlite3, "connect", full)
        folder = tmp_path / f"p{n}"
        try:
            Project.create(folder).close()
        except ProjectError as exc:
            msg = one_line(exc, folder)
            assert "disk is full" in msg, msg
            assert not folder.exists() or _leftovers(folder) == [], _leftovers(folder)
        else:
            statements = full.count
            break
        finally:
            monkeypatch.setattr(sqlite3, "connect", full.real)
        with Project.create(folder) as p:  # the disk has room again: creation works
            assert p.classes() == []
    assert statements > 10, "every failure point was tried, then creation succeeded"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_project_create_fails_cleanly_when_the_final_link_fails(tmp_path: Path, monkeypatch,
                                                                 err: int) -> None:
    def fail(*_: object) -> None:
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(os, "replace", fail)
    folder = tmp_path / "p"
    with pytest.raises(ProjectError, match="nothing was left behind") as exc:
        Project.create(folder)
    one_line(exc.value, folder)
    assert not folder.exists()


def test_existing_folder_stays_and_holds_nothing_after_a_failed_create(tmp_path: Path,
                                                                      monkeypatch) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    monkeypatch.setattr(sqlite3, "connect", _FullAfter(5))
    with pytest.raises(ProjectError, match="disk is full"):
        Project.create(folder)
    assert _leftovers(folder) == ["notes.txt"]


def _empty_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # the header only, as the old creation left it
    conn.close()


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""), _empty_sqlite],
                         ids=["zero-bytes", "header-only"])
def test_a_half_created_database_says_how_to_recover(tmp_path: Path, capsys,
                                                     make: Callable[[Path], None]) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    db = folder / "project.sqlite"
    make(db)
    with pytest.raises(ProjectCorruptError, match="creation did not finish") as exc:
        Project.open(folder)
    msg = one_line(exc.value, db)
    assert f"project create {folder}" in msg
    err = cli_error(capsys, "annotations", "export", str(folder), "1", str(tmp_path / "x.geojson"))
    assert "creation did not finish" in err
    with Project.create(folder) as project:  # what the message says: create replaces it
        assert project.classes() == []
    Project.open(folder).close()


def test_create_never_replaces_a_database_with_content(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    conn = sqlite3.connect(folder / "project.sqlite")
    conn.execute("CREATE TABLE x (y)")
    conn.close()
    with pytest.raises(ProjectError, match="already holds"):
        Project.create(folder)
    assert sqlite3.connect(folder / "project.sqlite").execute(
        "SELECT name FROM sqlite_master").fetchall() == [("x",)]


# -- 6. export on a full or read-only disk ---------------------------------------------------------

@pytest.fixture
def filled(project: Project, slide) -> Project:
    store = project.store(slide)
    store.add([Annotation(box(i * 20, 0, i * 20 + 10, 10), "tumour") for i in range(20)])
    return project


@pytest.mark.parametrize("name", ["a.geojson", "a.xml", "m.png", "m.tif"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
def test_export_on_a_failing_disk_is_one_line_and_leaves_nothing(
        filled: Project, slide, tmp_path: Path, monkeypatch, name: str, err: int) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / name
    out.write_bytes(b"the previous export")

    def fail(*_: object) -> None:
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "fsync", fail)  # after the temporary file is written in full
    with pytest.raises(AnnotationError, match="cannot be written") as exc:
        export_file(filled.store(slide), out, downsample=8)
    one_line(exc.value, out)
    assert out.read_bytes() == b"the previous export" and _leftovers(out_dir, name) == []


def test_export_half_written_then_disk_full(filled: Project, slide, tmp_path: Path,
                                            monkeypatch) -> None:
    real = Path.write_bytes

    def half(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", half)
    out = tmp_path / "a.geojson"
    with pytest.raises(AnnotationError, match="the disk is full") as exc:
        export_file(filled.store(slide), out)
    one_line(exc.value, out)
    assert _leftovers(tmp_path, "proj") == []


def test_export_onto_a_folder_is_one_line(filled: Project, slide, tmp_path: Path,
                                          capsys) -> None:
    target = tmp_path / "taken.geojson"
    target.mkdir()
    with pytest.raises(AnnotationError, match="is a folder") as exc:
        export_file(filled.store(slide), target)
    one_line(exc.value, target)
    filled.close()
    err = cli_error(capsys, "annotations", "export", str(tmp_path / "proj"), "1", str(target))
    assert "is a folder" in err


def test_export_failure_at_the_cli(filled: Project, slide, tmp_path: Path, monkeypatch,
                                   capsys) -> None:
    filled.close()

    def fail(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    out = tmp_path / "x.geojson"
    err = cli_error(capsys, "annotations", "export", str(tmp_path / "proj"), "1", str(out))
    assert "disk is full" in err and not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".x.geojson")] == []


def test_a_stored_geometry_is_strictly_finite_after_import(project: Project, slide,
                                                           tmp_path: Path) -> None:
    """Import then export of the biggest legal coordinates: strict JSON, finite areas."""
    path = tmp_path / "edge.geojson"
    m = MAX_COORDINATE
    path.write_text(_geojson([[-m, -m], [m, -m], [m, m], [-m, -m]]))
    store = project.store(slide)
    import_file(store, path)
    out = tmp_path / "round.geojson"
    export_file(store, out)
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    geom = shapely.geometry.shape(doc["features"][0]["geometry"])
    assert geom.area == pytest.approx(2 * m * m)
