"""What the pathologist sees: the overlay's colours, and imported files drawn over the slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.state.viewport import Viewport
from qt_probe import drag, grab_rgb, wait_drawn
from engine.api import Kind
from engine.shared_data import data_path

TUMOUR = np.array([220, 40, 40])


def shown(qtbot, window, overlay: bool) -> np.ndarray:
    window.view.annotator.overlay.visible = overlay
    window.view.update()
    wait_drawn(qtbot, window.view)
    return grab_rgb(window.view).astype(float)


def test_fill_is_the_class_colour_at_the_set_opacity(qtbot, annotating) -> None:
    view = annotating.view
    an = view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1200, 1200)])
    an.set_tool(None)
    annotating.annotations.palette.opacity.setValue(50)
    assert an.overlay.opacity == 0.5
    with_overlay, without = shown(qtbot, annotating, True), shown(qtbot, annotating, False)
    (sx0, sy0), (sx1, sy1) = view.viewport.to_screen(1000, 1000), view.viewport.to_screen(1200, 1200)
    inside = (slice(round(sy0) + 6, round(sy1) - 6), slice(round(sx0) + 6, round(sx1) - 6))
    a = round(255 * 0.5) / 255
    expected = without[inside] * (1 - a) + TUMOUR * a
    assert np.abs(with_overlay[inside] - expected).max() <= 2.5
    outside = (slice(round(sy1) + 6, round(sy1) + 40), slice(round(sx0), round(sx1)))
    assert np.abs(with_overlay[outside] - without[outside]).max() <= 1  # nothing drawn beside it
    # the outline is the opaque class colour
    row = with_overlay[round(sy0) - 1:round(sy0) + 2, round(sx0) + 20:round(sx1) - 20]
    assert np.abs(row - TUMOUR).sum(axis=2).min(axis=0).mean() < 40
    annotating.annotations.palette.opacity.setValue(0)
    no_fill = shown(qtbot, annotating, True)
    assert np.abs(no_fill[inside] - without[inside]).max() <= 1


def test_rois_are_dashed_and_unfilled(qtbot, annotating) -> None:
    view = annotating.view
    an = view.annotator
    an.set_tool("roi")
    drag(view, [(1000, 1000), (1300, 1200)])
    an.set_tool(None)
    with_overlay, without = shown(qtbot, annotating, True), shown(qtbot, annotating, False)
    (sx0, sy0), (sx1, _) = view.viewport.to_screen(1000, 1000), view.viewport.to_screen(1300, 1200)
    y = round(sy0)
    inside = (slice(y + 8, y + 100), slice(round(sx0) + 8, round(sx1) - 8))
    assert np.abs(with_overlay[inside] - without[inside]).max() <= 1  # not filled
    edge = np.abs(with_overlay[y - 1:y + 2, round(sx0) + 10:round(sx1) - 10]
                  - without[y - 1:y + 2, round(sx0) + 10:round(sx1) - 10]).max(axis=(0, 2))
    changed = edge > 30
    assert 0.3 < changed.mean() < 0.9  # dashes: drawn and gaps along the top edge


def test_imagescope_import_through_the_file_menu_path_is_drawn(qtbot, annotating) -> None:
    path = data_path("annotations", "aperio", "TCGA-B0-5710-01Z-00-DX1.xml")
    result = annotating.annotations.import_annotations(path)
    assert result is not None and result.count == 359
    an = annotating.view.annotator
    assert an.store.count() == 359
    assert an.document.undo_stack.undoText() == f"import {path.name}"
    view = annotating.view
    w, h = view.width(), view.height()
    view.set_viewport(Viewport(500, 500, 1.0, w, h))
    before = shown(qtbot, annotating, False)
    after = shown(qtbot, annotating, True)
    assert an.overlay.stats.drawn > 100
    biggest = max(an.store.query(*view.viewport.visible_rect()), key=lambda a: a.area)
    c = biggest.geometry.representative_point()
    sx, sy = (round(v) for v in view.viewport.to_screen(c.x, c.y))
    assert np.abs(after[sy, sx] - before[sy, sx]).sum() > 20  # the outline's inside is tinted
    annotating.annotations.act_undo.trigger()  # one step: the whole import goes
    assert an.store.count() == 0


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 9000 × 19000 pyramid: big enough for the HistomicsTK nuclei at x ≈ 8400, y ≈ 18800."""
    from engine.slide.pyramid import build_pyramid_tiff

    return build_pyramid_tiff(tmp_path_factory.mktemp("nuclei") / "nuclei.tif", 9000, 19000,
                              seed=5)


def test_geojson_import_is_drawn_and_asap_round_trips(qtbot, window, nuclei_slide,
                                                      tmp_path: Path) -> None:
    assert window.open_path(nuclei_slide)
    path = data_path("annotations", "geojson", "sample_histomicstk_nuclei_TCGA-02-0010.geojson")
    result = window.annotations.import_annotations(path)
    assert result is not None and result.count == 10
    view, an = window.view, window.view.annotator
    view.set_viewport(Viewport(8490, 18810, 0.5, view.width(), view.height()))
    before, after = shown(qtbot, window, False), shown(qtbot, window, True)
    assert an.overlay.stats.drawn == 10
    tinted = 0
    for ann in an.store.annotations():
        c = ann.geometry.representative_point()
        sx, sy = (round(v) for v in view.viewport.to_screen(c.x, c.y))
        tinted += np.abs(after[sy, sx] - before[sy, sx]).sum() > 15
    assert tinted == 10
    # out as ASAP through the export path, back in as a second copy: same shapes
    out = tmp_path / "nuclei.xml"
    assert window.annotations.export_annotations(out, "asap")
    again = window.annotations.import_annotations(out)
    assert again is not None and again.count == 10
    areas = sorted(round(a.area, 1) for a in an.store.annotations())
    assert areas[::2] == areas[1::2]


def test_real_asap_file_imports_as_one_undoable_step(qtbot, window, nuclei_slide) -> None:
    assert window.open_path(nuclei_slide)
    path = data_path("annotations", "asap", "camelyon16_metastasis", "tumor_076.xml")
    result = window.annotations.import_annotations(path)
    an = window.view.annotator
    assert result is not None and result.count == 39 == an.store.count()
    assert any("outside the slide" in w for w in result.warnings)  # a Camelyon slide's outlines
    assert [c.name for c in an.classes][-1] == "metastasis"
    assert window.annotations.palette.list.count() == len(an.classes)


def test_a_broken_file_says_why_and_imports_nothing(qtbot, annotating, tmp_path: Path) -> None:
    bad = tmp_path / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", ')
    assert annotating.annotations.import_annotations(bad) is None
    assert "broken.geojson" in annotating.last_error
    assert annotating.error_box is not None and annotating.error_box.isVisible()
    assert annotating.view.annotator.store.count(kind=None) == 0
    wrong = tmp_path / "notes.xml"
    wrong.write_text("<Notes><Note/></Notes>")
    assert annotating.annotations.import_annotations(wrong) is None
    assert "neither ASAP" in annotating.last_error


def test_rois_and_regions_export_to_geojson(qtbot, annotating, tmp_path: Path) -> None:
    import json

    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    an.set_tool("roi")
    drag(view, [(900, 900), (1300, 1300)])
    out = tmp_path / "out.geojson"
    assert annotating.annotations.export_annotations(out, "geojson")
    features = json.loads(out.read_text())["features"]
    assert len(features) == 2
    assert an.store.count(kind=Kind.ROI) == 1


@pytest.mark.parametrize("move", ["pan", "zoom", "far"])
def test_the_layer_follows_pans_and_zooms(qtbot, annotating, move: str) -> None:
    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1200, 1200)])
    an.set_tool(None)
    if move == "pan":
        view.pan_by(-130, 70)
    elif move == "zoom":
        view.zoom_by(0.5, (100, 100))
    else:  # beyond the rendered window: a new window is rendered
        view.center_on(1900, 2600)
        view.center_on(1100, 1100)
    before, after = shown(qtbot, annotating, False), shown(qtbot, annotating, True)
    vp = view.viewport
    (sx0, sy0), (sx1, sy1) = vp.to_screen(1000, 1000), vp.to_screen(1200, 1200)
    inside = (slice(round(sy0) + 4, round(sy1) - 4), slice(round(sx0) + 4, round(sx1) - 4))
    a = round(255 * an.overlay.opacity) / 255
    assert np.abs(after[inside] - (before[inside] * (1 - a) + TUMOUR * a)).max() <= 3
    ring = after[round(sy1) + 4:round(sy1) + 30, round(sx0):round(sx1)]
    assert np.abs(ring - before[round(sy1) + 4:round(sy1) + 30, round(sx0):round(sx1)]).max() <= 1


def test_a_stroke_on_a_big_outline_shows_at_once(qtbot, annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    x0, y0, x1, y1 = view.viewport.visible_rect()
    drag(view, [(x0 + 20, y0 + 20), (x1 - 20, y1 - 20)])  # an outline filling the view
    an.set_tool(None)
    shown(qtbot, annotating, True)
    rendered = an.overlay._shown.id
    an.set_tool("brush")
    an.set_brush_um(20.0)
    drag(view, [(x1 - 60, y0 + 200), (x1 + 40, y0 + 200)])  # out across the right edge
    assert an.overlay.is_current(view.viewport)  # patched in place: no new render needed
    assert an.overlay._shown.id == rendered
    before, after = shown(qtbot, annotating, False), shown(qtbot, annotating, True)
    sx, sy = (round(v) for v in view.viewport.to_screen(x1 - 5, y0 + 200))  # the new bulge
    a = round(255 * an.overlay.opacity) / 255
    assert np.abs(after[sy, sx] - (before[sy, sx] * (1 - a) + TUMOUR * a)).max() <= 3
