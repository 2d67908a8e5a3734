"""Prediction display and summary, Qt-free: colouring probabilities, where caches live, the summary.

:func:`colorize` turns a region of the prediction cache ((h, w, C-1) uint8 foreground
probabilities) into premultiplied RGBA for the overlay: a thresholded mask (each pixel takes the
colour of its most likely class, background stays transparent), its outlines only, or a heatmap
(the most likely foreground class's colour with an alpha that grows with its probability). The
result is what the overlay's worker thread paints; the GUI thread only blits it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.api import Measurements, SlideInfo, labels_from_probs, sample, slide_key

MODES = ("mask", "heatmap")
#: What the Model panel and the summary say of the open slide for the active model (one source, so
#: the two never disagree): not predicted yet, or an earlier run's predictions being measured.
NOT_RUN = "Not run on this slide yet."
MEASURING = "Measuring an earlier run's predictions…"


@dataclass(frozen=True)
class PredictionStyle:
    """How predictions are drawn: mode, opacity (0–1), outline only, class colours (foreground)."""

    colors: tuple[tuple[int, int, int], ...]
    opacity: float = 0.5
    mode: str = "mask"
    outline: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown overlay mode {self.mode!r}; valid: {', '.join(MODES)}")


def _near(mask: np.ndarray, labels: np.ndarray, same: bool) -> np.ndarray:
    """Pixels with a 4-neighbour in ``mask`` whose label is (``same``) or is not the pixel's own."""
    out = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None),), (slice(None, -1),)), ((slice(None, -1),), (slice(1, None),)),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
        eq = labels[a] == labels[b]
        out[a] |= mask[b] & (eq if same else ~eq)
    return out


def _edges(labels: np.ndarray) -> np.ndarray:
    """A two-pixel band on the inner side of each class's outline."""
    fg = labels > 0
    first = _near(np.ones(labels.shape, bool), labels, same=False) & fg
    return first | (_near(first, labels, same=True) & fg)


def colorize(probs: np.ndarray, style: PredictionStyle) -> np.ndarray:
    """(h, w, C-1) uint8 probabilities → (h, w, 4) uint8 premultiplied RGBA (transparent background).

    With one foreground class and filled shapes, each pixel depends on its probability alone: a
    256-entry table (built by the general path, so the two agree exactly) does it in one lookup.
    """
    if probs.shape[-1] == 1 and not (style.mode == "mask" and style.outline):
        table = _colorize(np.arange(256, dtype=np.uint8).reshape(1, 256, 1), style)
        lut = np.ascontiguousarray(table[0]).view(np.uint32)[:, 0]
        return lut[probs[..., 0]][..., None].view(np.uint8)
    return _colorize(probs, style)


def _colorize(probs: np.ndarray, style: PredictionStyle) -> np.ndarray:
    h, w = probs.shape[:2]
    lut = np.zeros((len(style.colors) + 1, 3), np.float32)
    lut[1:] = np.asarray(style.colors, np.float32)
    if style.mode == "heatmap":
        best = probs.argmax(axis=-1)
        p = np.take_along_axis(probs, best[..., None], axis=-1)[..., 0].astype(np.float32) / 255.0
        labels = np.where(p > 0, best + 1, 0)
        alpha = p * style.opacity
    else:
        labels = labels_from_probs(probs)
        if style.outline:
            labels = np.where(_edges(labels), labels, 0)
        alpha = np.where(labels > 0, style.opacity, 0.0).astype(np.float32)
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = np.rint(lut[labels] * alpha[..., None])
    out[..., 3] = np.rint(alpha * 255.0)
    return out


def level_choices(info: SlideInfo) -> list[tuple[int, str]]:
    """(level, label) for the Model panel's level picker: size, downsample and, when the scanner's
    objective power or the pixel size tells it, the magnification."""
    base = info.base_magnification
    out = []
    for k, ((w, h), ds) in enumerate(zip(info.level_dimensions, info.level_downsamples)):
        parts = ["full resolution" if k == 0 else f"÷{ds:.3g}"]
        if base:
            parts.append(f"{base / ds:.3g}×")
        out.append((k, f"Level {k}: {w:,} × {h:,} px ({', '.join(parts)})"))
    return out


def level_note(info: SlideInfo, model_mpp: float | None, default: int, earlier: bool = False) -> str:
    """Why the Model panel asks for a level, and where its default comes from (``earlier``: the
    level of the earlier run whose predictions are shown)."""
    if info.mpp is None:
        why = ("This slide does not record its pixel size (µm/px), so CoCoPath cannot run the model "
               "at the resolution it was trained at.")
    else:
        why = "The model's card does not say at which resolution (µm/px) it was trained."
    how = (" Choose the slide level to run at: the one nearest the model's training resolution "
           "gives the best masks; coarser levels run faster.")
    if earlier:
        src = (f" Level {default} is selected: the earlier run's, whose predictions are shown (a run "
               f"at another level replaces them).")
    elif info.mpp is None and model_mpp is not None and info.objective_power:
        src = (f" The default, level {default}, is nearest the model's {model_mpp:g} µm/px for a "
               f"{info.objective_power:g}× scan.")
    else:
        src = f" The default is level {default}" + (", the full resolution." if default == 0 else ".")
    return why + how + src


def prediction_folder(slide_path: str | Path, version: str) -> Path:
    """Where the prediction cache of ``version`` on this slide lives, under the user data folder."""
    return sample.user_data_dir() / "predictions" / slide_key(slide_path) / version


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary: a class (or "tissue"), its area and its fraction of the tissue."""

    name: str
    area: float  # mm² with a pixel size, else level-0 px²
    fraction: float | None


@dataclass(frozen=True)
class Summary:
    """The numbers the summary panel shows and exports."""

    unit: str  # "mm²" or "px²"
    tissue_area: float
    rows: tuple[SummaryRow, ...]
    model: str
    slide: str
    complete: bool


def summarize(m: Measurements, slide: str, model: str, complete: bool) -> Summary:
    """The engine's measurements in display units (mm² when the slide has a pixel size)."""
    in_mm = m.tissue_area_um2 is not None
    unit = "mm²" if in_mm else "px²"
    tissue = m.tissue_area_um2 / 1e6 if in_mm else m.tissue_area_px  # type: ignore[operator]
    rows = tuple(SummaryRow(c.name, c.area_um2 / 1e6 if in_mm and c.area_um2 is not None else c.area_px,
                            c.fraction_of_tissue) for c in m.classes)
    return Summary(unit, float(tissue), rows, model, slide, complete)


def summary_csv(s: Summary) -> str:
    """CSV text: one row per class and one for the tissue (area in the summary's unit)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["slide", "model", "class", f"area_{'mm2' if s.unit == 'mm²' else 'px2'}",
                 "fraction_of_tissue", "complete"])
    for r in s.rows:
        wr.writerow([s.slide, s.model, r.name, f"{r.area:.6g}",
                     "" if r.fraction is None else f"{r.fraction:.6f}", s.complete])
    wr.writerow([s.slide, s.model, "tissue", f"{s.tissue_area:.6g}", "1.000000", s.complete])
    return buf.getvalue()
