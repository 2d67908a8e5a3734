"""A region of any size read as a coarse image, in pieces of bounded size.

Tissue detection, thumbnails and inference windows far coarser than the slide level they read from
need a level's pixels averaged down, never the level whole in memory: a 100 000² single-level slide
is 37 GiB of RGBA. :func:`read_reduced` reads column bands of at most :data:`BAND` pixels (aligned to
cells) and at most :data:`MAX_READ_PIXELS` pixels per read, and keeps only per-cell sums, so memory
stays at one read plus the output whatever the region's size.

Where the region holds more than ``exact_pixels`` pixels, not every row is read: each cell averages
a grid of evenly spaced samples, as many rows as the budget allows (at least one) by at least
:data:`SAMPLED_COLUMNS` columns, so reading a huge single-level slide stays within a fixed budget of
pixels processed (OpenSlide still decodes every tile the sampled rows cross). Pixels come back as
RGB composited on white, as :meth:`SlideSource.read_rgb` does (premultiplied ARGB averages exactly).
"""

from __future__ import annotations

import math

import numpy as np

from engine.slide.request import RegionRequest
from engine.slide.source import SlideSource, argb_to_rgb

#: Widest column band read at once (cells never straddle bands, so a wider cell widens its band).
BAND = 8192
#: Most pixels in one read (16 MiB of ARGB).
MAX_READ_PIXELS = 1 << 22
#: Regions up to this many pixels are averaged over every pixel; larger ones over sampled rows.
EXACT_PIXELS = 1 << 27


#: Columns averaged per cell when rows are sampled (at least as many as the rows).
SAMPLED_COLUMNS = 4


def rows_per_cell(width: int, height: int, step: int, exact_pixels: float = EXACT_PIXELS) -> int:
    """How many rows of each cell are read: all of them while the region fits ``exact_pixels``,
    else as many as keep the total under it (at least one)."""
    if width * height <= exact_pixels:
        return step
    return max(1, min(step, int(exact_pixels // (width * math.ceil(height / step)))))


def _spread(size: int, step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cell starts in them): ``k`` evenly spaced indices in each ``step``-long cell of
    [0, size) (all of a cell's when it has no more than ``k``)."""
    idx, starts = [], []
    n = 0
    for c in range(0, size, step):
        w = min(step, size - c)
        m = min(k, w)
        starts.append(n)
        idx.append(c + ((np.arange(m) + 0.5) * w / m).astype(np.int64))
        n += m
    return np.concatenate(idx), np.asarray(starts)


def read_reduced(slide: SlideSource, level: int, x: int, y: int, width: int, height: int,
                 step: int, *, exact_pixels: float = EXACT_PIXELS) -> np.ndarray:
    """Pixels of ``level`` over ``width`` × ``height`` at level-0 (``x``, ``y``), averaged over
    cells of ``step`` × ``step``: (ceil(height/step), ceil(width/step), 3) uint8 RGB on white
    (the last row and column of cells average what the region holds of them)."""
    step = max(1, int(step))
    ds = slide.info.level_downsamples[level]
    ncols, nrows = math.ceil(width / step), math.ceil(height / step)
    out = np.empty((nrows, ncols, 3), np.uint8)
    r = rows_per_cell(width, height, step, exact_pixels)
    exact = r == step
    ys = np.arange(height) if exact else _spread(height, step, r)[0]
    band = max(step, BAND // step * step)
    for bx in range(0, width, band):
        bw = min(band, width - bx)
        c0 = bx // step
        if exact:
            cols, col_starts = None, np.arange(0, bw, step)
        else:  # a few columns of each cell
            cols, col_starts = _spread(bw, step, max(r, SAMPLED_COLUMNS))
        col_counts = np.diff(np.append(col_starts, bw if cols is None else len(cols)))
        per_read = max(1, MAX_READ_PIXELS // bw)
        carry: tuple[int, np.ndarray, int] | None = None  # (cell row, sums, rows) still open
        for i in range(0, len(ys), per_read):
            rows = ys[i:i + per_read]
            buf = _read_rows(slide, level, x + round(bx * ds), y, ds, bw, rows)
            if step == 1:  # nothing to average
                out[rows[0]:rows[-1] + 1, c0:c0 + bw] = argb_to_rgb(buf)
                continue
            if cols is not None:
                buf = np.take(buf, cols, axis=1)  # (whole words: four times fewer than bytes)
            b = buf.view(np.uint8).reshape(*buf.shape, 4)
            cells = rows // step
            starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
            counts = np.diff(np.append(starts, len(rows)))
            if len(starts) < len(rows):
                b = np.add.reduceat(b, starts, axis=0, dtype=np.uint32)
            sums = np.add.reduceat(b, col_starts, axis=1, dtype=np.uint32).astype(np.uint64)
            js = cells[starts]
            if carry is not None and carry[0] == js[0]:  # the open cell row goes on
                sums[0] += carry[1]
                counts[0] += carry[2]
            elif carry is not None:
                _finish(out, np.array([carry[0]]), carry[1][None], np.array([carry[2]]), c0,
                        col_counts)
            _finish(out, js[:-1], sums[:-1], counts[:-1], c0, col_counts)
            carry = (int(js[-1]), sums[-1], int(counts[-1]))  # may go on in the next read
        if carry is not None:
            _finish(out, np.array([carry[0]]), carry[1][None], np.array([carry[2]]), c0, col_counts)
    return out


def _read_rows(slide: SlideSource, level: int, x: int, y: int, ds: float, width: int,
               rows: np.ndarray) -> np.ndarray:
    """ARGB of ``rows`` (level rows from level-0 ``y``), one read if they are contiguous."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slide.read_argb(RegionRequest(slide.info.path, level, x, y + round(int(rows[0]) * ds),
                                             width, len(rows)))
    ys = [y + round(int(r) * ds) for r in rows]
    batched = getattr(slide, "read_argb_rows", None)  # OpenSlideSource: one lock for all rows
    if batched is not None:
        return batched(level, x, ys, width)
    return np.concatenate([slide.read_argb(RegionRequest(slide.info.path, level, x, yy, width, 1))
                           for yy in ys])


def _finish(out: np.ndarray, rows: np.ndarray, sums: np.ndarray, counts: np.ndarray, c0: int,
            col_counts: np.ndarray) -> None:
    """Write complete cell rows: per-cell premultiplied means composited on white, rounded.
    ``sums`` is (rows, cells, 4) of B, G, R, A byte sums (ARGB words are little-endian)."""
    if not len(rows):
        return
    n = (counts.astype(np.uint64)[:, None] * col_counts.astype(np.uint64)[None, :])[..., None]
    white = n * 255 - sums[..., 3:4]
    rgb = (sums[..., [2, 1, 0]] + white + n // 2) // n
    out[rows, c0:c0 + len(col_counts)] = np.minimum(rgb, 255).astype(np.uint8)
