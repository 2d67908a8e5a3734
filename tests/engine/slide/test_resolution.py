"""The resolution guard's sentence and threshold (engine.slide.resolution, no torch)."""

from __future__ import annotations

import pytest

from engine.slide.resolution import format_mpp, resolution_problem


def test_a_slide_far_coarser_than_the_model_gets_the_sentence():
    assert resolution_problem(29.0, 1.0) == ("this slide is 29 µm/px; the model reads 1 µm/px: "
                                             "its predictions here are not meaningful")
    assert resolution_problem(4.1, 0.5) == ("this slide is 4.1 µm/px; the model reads 0.5 µm/px: "
                                            "its predictions here are not meaningful")
    assert "the model reads 0.25 µm/px" in resolution_problem(1.0, 0.25)


def test_finer_equal_or_up_to_twice_coarser_is_fine():
    assert resolution_problem(0.25, 1.0) is None
    assert resolution_problem(1.0, 1.0) is None
    assert resolution_problem(2.0, 1.0) is None  # exactly the factor: still read
    assert resolution_problem(2.01, 1.0) is not None


def test_unknown_or_nonsense_pixel_sizes_say_nothing():
    for slide, model in ((None, 1.0), (29.0, None), (None, None), (0.0, 1.0), (29.0, -1.0),
                         (float("nan"), 1.0), (float("inf"), 1.0)):
        assert resolution_problem(slide, model) is None, (slide, model)


def test_the_factor_can_be_chosen():
    assert resolution_problem(3.0, 1.0, factor=4.0) is None
    assert resolution_problem(3.0, 1.0, factor=1.5) is not None


@pytest.mark.parametrize("value, text", [(0.25, "0.25"), (0.2527, "0.25"), (1.0, "1"), (29.0, "29"),
                                         (4.1, "4.1"), (0.499, "0.5"), (12.6, "13"), (0.05, "0.05"),
                                         (0.0004, "0.0004"), (0.00004, "0.00004")])
def test_numbers_read_as_a_person_would_write_them(value, text):
    assert format_mpp(value) == text
