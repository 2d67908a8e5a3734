"""The table of annotation formats: names, directions, what each holds, and who reads it (the
command line's --format choices, the GUI's file filters, import and export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import Polygon

from engine.annotations import Annotation, Kind, ParsedAnnotations, Project, SlideRecord
from engine.annotations import registry
from engine.annotations.errors import AnnotationError
from engine.annotations.formats import export_file, import_file, read_annotations
from engine.annotations.registry import (AnnotationFormat, Capabilities, annotation_format,
                                         annotation_formats, format_for_suffix, format_names)
from engine.cli import build_parser, main

SQUARE_WITH_HOLE = Polygon([(100, 100), (600, 100), (600, 600), (100, 600)],
                           [[(250, 250), (450, 250), (450, 450), (250, 450)]])


def test_names_and_directions() -> None:
    assert format_names() == ("geojson", "asap", "imagescope", "mask")
    assert format_names("import") == ("geojson", "asap", "imagescope")
    assert format_names("export") == ("geojson", "asap", "mask")
    assert annotation_format("asap").extensions == (".xml",)
    assert format_for_suffix("a/b.GeoJSON").name == "geojson"
    assert format_for_suffix("m.tiff").name == "mask" and format_for_suffix("notes.txt") is None
    assert format_for_suffix("x.xml", "import").name == "asap"  # the first that reads .xml


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(AnnotationError, match=r"'svg' \(known: geojson, asap, imagescope, mask\)"):
        annotation_format("svg")
    with pytest.raises(AnnotationError, match=r"export format 'imagescope' \(known: geojson, asap, "
                                              r"mask\)"):
        annotation_format("imagescope", "export")
    with pytest.raises(AnnotationError, match=r"'mask' \(known: geojson, asap, imagescope\)"):
        read_annotations("whatever.png", "mask")
    with pytest.raises(AnnotationError, match="direction"):
        annotation_formats("sideways")  # type: ignore[arg-type]
    with pytest.raises(AnnotationError, match="already registered"):
        registry.register_format(annotation_format("asap"))


def test_the_command_line_offers_the_tables_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_export:
        main(["annotations", "export", "p", "1", "out.svg", "--format", "svg"])
    err = capsys.readouterr().err
    assert "invalid choice: 'svg'" in err and "'geojson', 'asap', 'mask'" in err
    with pytest.raises(SystemExit) as exit_import:
        main(["annotations", "import", "p", "1", "in.xml", "--format", "mask"])
    assert "'geojson', 'asap', 'imagescope'" in capsys.readouterr().err
    assert exit_export.value.code == exit_import.value.code == 2


def test_a_registered_format_is_read_and_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake = AnnotationFormat("fake", "Fake text", (".fake",),
                            Capabilities(outlines=True, classes=False, holes=False,
                                         measurements=False, rois=False),
                            reader=f"{__name__}:read_fake")
    monkeypatch.setitem(registry._FORMATS, "fake", fake)
    assert "fake" in format_names("import") and "fake" not in format_names("export")
    path = tmp_path / "one.fake"
    path.write_text("10 10 90 10 90 90 10 90")
    parsed = read_annotations(path, "fake")
    assert parsed.format == "Fake text" and parsed.annotations[0].area == 80 * 80
    args = build_parser().parse_args(["annotations", "import", "p", "1", str(path), "--format",
                                      "fake"])
    assert args.format == "fake"
    with pytest.raises(AnnotationError, match="written, not read"):
        annotation_format("mask").read(path)
    with pytest.raises(AnnotationError, match="read, not written"):
        fake.write(path, [], None)  # type: ignore[arg-type]


def read_fake(path: Path) -> ParsedAnnotations:
    xy = [float(v) for v in path.read_text().split()]
    shape = Polygon(list(zip(xy[::2], xy[1::2], strict=True)))
    return ParsedAnnotations((Annotation(shape),), (), (), "Fake text", None)


@pytest.fixture
def holed(project: Project, slide: SlideRecord):  # noqa: ANN201 - the slide's store
    store = project.store(slide.id)
    store.edit([(None, Annotation(SQUARE_WITH_HOLE, "Tumour")),
                (None, Annotation(Polygon([(700, 700), (800, 700), (800, 800)]), kind=Kind.ROI))],
               "a holed region and an ROI")
    return store


@pytest.mark.parametrize("fmt", [f.name for f in annotation_formats("export")
                                 if f.capabilities.outlines])
def test_capabilities_say_what_survives_a_round_trip(fmt: str, holed, project: Project,  # noqa: ANN001
                                                     small_svs: Path, tmp_path: Path) -> None:
    """Holes, ROIs, classes and measurements survive exactly where the table says they do."""
    caps = annotation_format(fmt).capabilities
    out = tmp_path / f"out{annotation_format(fmt).extensions[0]}"
    result = export_file(holed, out, fmt)
    assert result.count == 2
    assert any("hole" in w for w in result.warnings) is not caps.holes
    if caps.measurements:
        feature = json.loads(out.read_text())["features"][0]
        assert feature["properties"]["measurements"]["Area px^2"] == SQUARE_WITH_HOLE.area
    with Project.create(tmp_path / "other", author="dr-other") as other:
        store = other.store(other.add_slide(small_svs).id)
        assert import_file(store, out).format in annotation_format(fmt).title  # "GeoJSON"
        back = store.annotations(kind=None)
    regions = [a for a in back if a.kind is Kind.REGION]
    rois = [a for a in back if a.kind is Kind.ROI]
    assert len(rois) == (1 if caps.rois else 0)
    assert (regions[0].class_name == "Tumour") is caps.classes
    assert regions[0].area == (SQUARE_WITH_HOLE.area if caps.holes else 500 * 500)

