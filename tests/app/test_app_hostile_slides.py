"""Hostile slides in the main window: a 100 000² single-level slide (no coarser level at all) opens
and is drawn (its thumbnail read in bounded pieces; the whole slide in view shows the thumbnail, as
its 38 000 level-0 tiles would never fit the tile cache; zoomed in, the tiles come), and a FIFO or
a device chosen as a slide gets one line in a message box instead of a frozen window."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from qt_probe import grab_rgb, wait_drawn
from tiff_fixtures import write_sparse_slide

PATCH = (40_000, 40_000, 4_000, 4_000)


def test_a_huge_single_level_slide_opens_and_is_drawn(qtbot, window, tmp_path) -> None:
    from app.state.viewport import Viewport

    slide = write_sparse_slide(tmp_path / "huge.tif", tissue=PATCH)
    t = time.perf_counter()
    assert window.open_path(slide)
    assert time.perf_counter() - t < 20
    view = window.view
    wait_drawn(qtbot, view)  # the whole slide: the thumbnail
    whole = grab_rgb(view)
    assert whole.min() < 240  # the pink patch shows, small, in the middle of the glass
    x, y, w, h = PATCH
    vw, vh = view.width(), view.height()
    view.set_viewport(Viewport(x + w / 2, y + h / 2, 8.0, vw, vh))  # the patch fills the view
    wait_drawn(qtbot, view, timeout=30000)
    shot = grab_rgb(view)
    pink = (shot[..., 0].astype(int) - shot[..., 1] > 40) & (shot[..., 2].astype(int) - shot[..., 1] > 20)
    assert pink.mean() > 0.3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_gets_a_message_not_a_frozen_window(qtbot, window, small_svs, tmp_path,
                                                           kind) -> None:
    if kind == "fifo":
        bad = tmp_path / "slide.svs"
        os.mkfifo(bad)
        unblock = threading.Timer(20, _open_for_writing, [bad])  # a regression fails, not hangs
        unblock.start()
    else:
        bad = Path("/dev/zero")
    assert window.open_path(small_svs)
    before = window.source
    try:
        assert not window.open_path(bad)
    finally:
        if kind == "fifo":
            unblock.cancel()
    box = window.error_box
    assert box is not None and box.isVisible() and box.text().count("\n") == 0
    assert str(bad) in box.text() and "not a file" in box.text()
    assert window.source is before
    box.close()


def _open_for_writing(fifo: Path) -> None:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # nobody reading: nothing blocked
        pass
