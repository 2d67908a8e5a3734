"""The main window as a user meets it: open, navigate by the overview, errors, recent files, drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from qt_probe import grab_rgb, wait_drawn
from engine.slide import RegionRequest


def test_screenshot_of_a_real_slide_is_not_blank(qtbot, window, small_svs, tmp_path) -> None:
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    shot = grab_rgb(window)
    assert shot.std() > 20
    view_px = grab_rgb(window.view)
    # H&E: plenty of pink/purple pixels (red and blue above green) in the view
    pink = (view_px[..., 0].astype(int) - view_px[..., 1] > 30) & (view_px[..., 2].astype(int) - view_px[..., 1] > 10)
    assert pink.mean() > 0.05
    assert window.mag_label.text().endswith("×")
    assert window.windowTitle().startswith("cmu-1-small-region.svs")
    window.grab().save(str(tmp_path / "window.png"))


def test_overview_click_and_drag_navigate(qtbot, window, small_svs) -> None:
    assert window.open_path(small_svs)
    view, ov = window.view, window.overview
    view.set_downsample(1.0)
    wait_drawn(qtbot, view)
    r = ov.image_rect()
    target = QPointF(r.left() + r.width() * 0.25, r.top() + r.height() * 0.7)
    qtbot.mouseClick(ov, Qt.MouseButton.LeftButton, pos=target.toPoint())
    want = ov.to_slide(QPointF(target.toPoint()))
    assert (view.viewport.cx, view.viewport.cy) == pytest.approx(want, abs=1e-6)
    qtbot.mousePress(ov, Qt.MouseButton.LeftButton, pos=target.toPoint())
    end = QPoint(int(r.left() + r.width() * 0.6), int(r.top() + r.height() * 0.3))
    qtbot.mouseMove(ov, end)
    qtbot.mouseRelease(ov, Qt.MouseButton.LeftButton, pos=end)
    assert (view.viewport.cx, view.viewport.cy) == pytest.approx(ov.to_slide(QPointF(end)), abs=1e-6)
    # the overview's rectangle follows, and the view shows that part of the slide
    vr = ov.viewport_rect()
    assert vr.contains(QPointF(end))
    wait_drawn(qtbot, view)
    x0, y0 = (int(round(v)) for v in view.viewport.origin)
    src = window.source
    h = view.height() - 70
    x0c, y0c = max(0, x0), max(0, y0)
    ref = src.read_rgb(RegionRequest(src.info.path, 0, x0c, y0c, view.width() - (x0c - x0), h - (y0c - y0)))
    got = grab_rgb(view)[y0c - y0:h, x0c - x0:]
    got, ref = got[: ref.shape[0], : ref.shape[1]], ref[: got.shape[0], : got.shape[1]]
    assert np.abs(got.astype(int) - ref).mean() < 1.0


def test_presets_follow_the_slide(qtbot, window, small_svs, no_mpp_svs) -> None:
    assert window.open_path(small_svs)
    enabled = [m for m, a in window.preset_actions.items() if a.isEnabled()]
    assert enabled == [1.0, 2.5, 5.0, 10.0, 20.0]
    window.preset_actions[10.0].trigger()
    assert window.mag_label.text() == "10×"
    assert window.open_path(no_mpp_svs)
    assert not any(a.isEnabled() for a in window.preset_actions.values())
    assert window.mag_label.text().startswith("1:")  # a zoom ratio where the magnification is unknown
    window.view.cursor_moved.emit(100.0, 200.0)
    assert window.pos_label.text() == "x 100 px, y 200 px"


@pytest.mark.parametrize("kind", ["truncated", "not_a_slide", "missing", "empty_folder"])
def test_bad_files_give_a_message_box_not_a_traceback(qtbot, window, small_svs, tmp_path, kind) -> None:
    if kind == "truncated":
        bad = tmp_path / "broken.svs"
        bad.write_bytes(Path(small_svs).read_bytes()[:300_000])
    elif kind == "not_a_slide":
        bad = tmp_path / "notes.svs"
        bad.write_text("this is not a slide\n")
    elif kind == "missing":
        bad = tmp_path / "nowhere.svs"
    else:
        bad = tmp_path / "folder"
        bad.mkdir()
    assert window.open_path(small_svs)
    before = window.source
    assert not window.open_path(bad)
    box = window.error_box
    assert box is not None and box.isVisible()
    assert bad.name in box.text() and "Traceback" not in box.text()
    assert box.text().count("\n") == 0
    assert window.source is before  # the open slide stays
    box.close()


def test_recent_files_and_layout_persist(qtbot, settings, cache, small_svs, no_mpp_svs) -> None:
    from app.main_window import MainWindow

    w = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w)
    w.show()
    assert w.open_path(small_svs) and w.open_path(no_mpp_svs)
    w.resize(760, 540)
    w.close()
    w2 = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w2)
    assert [Path(p).name for p in w2.recent_files()][:2] == [no_mpp_svs.name, small_svs.name]
    names = [a.text() for a in w2.recent_menu.actions()]
    assert any(small_svs.name in n for n in names)
    assert (w2.width(), w2.height()) == (760, 540)
    recent = next(a for a in w2.recent_menu.actions() if small_svs.name in a.text())
    recent.trigger()
    assert w2.source is not None and Path(w2.source.info.path).name == small_svs.name
    w2.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_drop_a_slide_opens_it(qtbot, window, dicom_dir) -> None:
    one_file = sorted(Path(dicom_dir).glob("*.dcm"))[0]
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(one_file))])
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    enter.ignore()
    window.dragEnterEvent(enter)
    assert enter.isAccepted()
    ev = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    window.dropEvent(ev)
    assert window.source is not None
    assert window.source.info.level_count == 12  # the whole DICOM slide, from one of its files
    wait_drawn(qtbot, window.view)


def test_info_panel_shows_properties_and_images(qtbot, window, small_svs, no_mpp_svs) -> None:
    assert window.open_path(small_svs)
    panel = window.info_panel
    assert panel.table.rowCount() > 20
    assert set(panel.image_labels) == {"label", "macro", "thumbnail"}
    assert not panel.image_labels["macro"].pixmap().isNull()
    panel.filter.setText("mpp")
    t = panel.table
    shown = [(t.item(i, 0).text() + " " + t.item(i, 1).text()).lower()
             for i in range(t.rowCount()) if not t.isRowHidden(i)]
    assert len(shown) >= 2 and all("mpp" in row for row in shown)
    assert window.open_path(no_mpp_svs)
    texts = [panel.form.itemAt(i).widget().text() for i in range(panel.form.count())
             if panel.form.itemAt(i).widget() is not None]
    assert any("unknown" in t for t in texts)


def test_sources_are_closed_when_replaced(qtbot, window, small_svs, no_mpp_svs) -> None:
    assert window.open_path(small_svs)
    first = window.source
    assert window.open_path(no_mpp_svs)
    qtbot.waitUntil(lambda: first._closed, timeout=5000)
    wait_drawn(qtbot, window.view)


def test_cursor_position_in_microns(qtbot, window, small_svs) -> None:
    assert window.open_path(small_svs)
    view = window.view
    view.set_downsample(1.0)
    seen = []
    view.cursor_moved.connect(lambda x, y: seen.append((x, y)))
    qtbot.mouseMove(view, QPoint(40, 60))
    qtbot.waitUntil(lambda: bool(seen), timeout=2000)
    x, y = seen[-1]
    ex, ey = view.viewport.to_slide(40, 60)
    assert abs(x - ex) < 16 and abs(y - ey) < 16  # where the pointer is (the platform may round)
    assert window.pos_label.text() == f"x {x * 0.499:.1f} µm, y {y * 0.499:.1f} µm"


def test_start_without_a_slide_offers_the_sample(qtbot, window, small_svs, monkeypatch) -> None:
    from PySide6.QtWidgets import QMessageBox

    monkeypatch.setenv("COCOPATH_SAMPLE", str(small_svs))
    window.offer_sample_download()
    box = window.error_box
    assert box.isVisible() and "sample" in box.text().lower()
    box.button(QMessageBox.StandardButton.Yes).click()
    qtbot.waitUntil(lambda: window.source is not None, timeout=5000)
    assert Path(window.source.info.path).name == small_svs.name


def test_unreadable_tiles_give_one_message_and_stand_ins(qtbot, window, small_svs, tmp_path) -> None:
    data = bytearray(Path(small_svs).read_bytes())
    data[700_000:800_000] = b"\xff" * 100_000  # tile data destroyed, the file still opens
    bad = tmp_path / "damaged.svs"
    bad.write_bytes(bytes(data))
    assert window.open_path(bad)
    view = window.view
    view.set_downsample(1.0)
    records = []
    view.painted.connect(records.append)
    wait_drawn(qtbot, view)  # complete despite the failures: nothing is left waiting
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box.isVisible(), timeout=5000)
    assert "damaged.svs" in window.error_box.text() and "\n" not in window.error_box.text()
    assert any(r.failed for r in records)
    shot = grab_rgb(view)
    assert (np.abs(shot.astype(int) - (62, 64, 70)).sum(axis=2) < 6).mean() < 0.5  # stand-ins, not void
