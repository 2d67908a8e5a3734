"""Which slide level a run takes when the slide or the model's card has no µm/px."""

from __future__ import annotations

from engine.inference.geometry import default_level, make_grid, needs_level
from engine.slide.source import SlideInfo

DIMS = ((40000, 30000), (10000, 7500), (2500, 1875))
DOWNS = (1.0, 4.0, 16.0)


def info(mpp=None, objective=None) -> SlideInfo:
    return SlideInfo("s.svs", "aperio", DIMS, DOWNS, mpp, objective)


def test_a_level_is_needed_only_when_a_resolution_is_missing():
    assert needs_level(info(), 1.0) and needs_level(info((0.25, 0.25)), None)
    assert needs_level(info(), None)
    assert not needs_level(info((0.25, 0.25)), 1.0)


def test_the_default_follows_the_objective_power_else_full_resolution():
    assert default_level(info(objective=40.0), 1.0) == 1  # ≈ 0.25 µm/px: 1 µm/px is ÷4
    assert default_level(info(objective=40.0), 4.0) == 2
    assert default_level(info(objective=40.0), 0.1) == 0  # finer than the scan: the finest level
    assert default_level(info(), 1.0) == 0  # nothing to go by: full resolution
    assert default_level(info(objective=40.0), None) == 0  # the card has no µm/px
    assert default_level(info((0.25, 0.25)), None) == 0


def test_the_grid_says_whether_its_level_was_chosen_or_the_default():
    by_default = make_grid(info(objective=40.0), 1.0)
    assert by_default.read_level == 1 and by_default.downsample == 4.0
    assert "no µm/px" in by_default.note and "by default" in by_default.note
    chosen = make_grid(info(objective=40.0), 1.0, level=2)
    assert chosen.read_level == 2 and "as chosen" in chosen.note
    matched = make_grid(info((0.25, 0.25)), 1.0)
    assert matched.read_level == 1 and matched.note == ""
