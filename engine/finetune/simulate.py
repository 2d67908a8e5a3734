"""The simulated pathologist of ``bench finetune``: slides with known truth, corrections, scoring.

- :func:`unseen_pairs`: the images of one image/mask folder (the layout of ``shared/data/seg/*``)
  whose case the model never saw: with a card that lists its cases (``train_cases`` /
  ``val_cases``, e.g. the shipped student's mixture split by case over six folders), every image
  whose case is in neither list, by the card's own case regex (EBHI folders share case ids, so a
  patient whose normal tiles were trained on is left out of the adenocarcinoma slide too); with a
  card that lists none, the **test** part of the folder's own split by case (regex
  ``^(.*?)-\\d+-400-\\d+$``, seed 0, 70/15/15, as ``engine.training.datasets`` makes it).
- :func:`is_negative`: a folder the card trained on as a *negative* (benign or pre-malignant
  epithelium, polyps): its masks outline something that is not tumour, so its truth is all
  background, as the model learnt it.
- :func:`build_slide`: a pyramidal JPEG-tiled TIFF (OpenSlide reads it as a generic tiled TIFF)
  whose level 0 is a mosaic of real H&E tiles on glass, with the tumour truth of every pixel.
- :func:`candidate_regions` / :func:`random_regions`: where a pathologist could look.
- :func:`write_corrections`: the pathologist reviews regions: each becomes a correction ROI holding
  the true tumour outline (so inside the ROI the labels are exactly the truth).
- :func:`predict` runs a checkpoint over a slide into a prediction cache, and
  :func:`score_cache` measures it against the truth on chosen pixels (those nobody corrected).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CocoPathError
from engine.inference.cache import PredictionCache
from engine.training.datasets import DEFAULT_GROUP_REGEX, Pair, case_of, find_pairs, split_by_case

log = logging.getLogger(__name__)

CELL = 224  # EBHI tiles are 224²; larger sources are resized to it (their masks by nearest)
GLASS = (242, 241, 245)
AUTHOR = "simulated pathologist"


@dataclass(frozen=True)
class SimSlide:
    """A built slide: its file, tumour truth and where truth is known (the tiles, not the glass)."""

    name: str
    path: Path
    truth: np.ndarray  # (H, W) bool, level 0: tumour
    known: np.ndarray  # (H, W) bool, level 0: pixels of real tiles
    tiles: tuple[str, ...]
    source: str
    mpp: float

    @property
    def size(self) -> tuple[int, int]:
        return self.truth.shape[1], self.truth.shape[0]


def _case(stem: str, pattern: re.Pattern[str]) -> str | None:
    try:
        return case_of(stem, pattern)
    except CocoPathError:
        return None


def unseen_pairs(folder: Path, card: dict[str, Any] | None = None, regex: str = DEFAULT_GROUP_REGEX,
                 seed: int = 0) -> tuple[list[Pair], dict[str, Any]]:
    """The pairs of ``folder`` whose case the model never trained or validated on, and how they
    were chosen (see the module docstring). An image whose name carries no case id (the regex does
    not match) is its own case."""
    folder = Path(folder)
    pairs = find_pairs([folder])
    data = (card or {}).get("data") or {}
    train, val = data.get("train_cases") or [], data.get("val_cases") or []
    info: dict[str, Any] = {"folder": folder.name, "path": str(folder)}
    if train or val:
        pattern = re.compile(data.get("group_regex") or regex)
        seen = set(train) | set(val)
        test = set(data.get("test_cases") or [])
        cases = {p.stem: _case(p.stem, pattern) or p.stem for p in pairs}
        chosen = [p for p in pairs if cases[p.stem] not in seen]
        kept = sorted({cases[p.stem] for p in chosen})
        dropped = sorted({cases[p.stem] for p in pairs} & seen)
        info.update({"from": "the card's case lists (images of cases it neither trained nor "
                             "validated on)", "group_regex": pattern.pattern,
                     "cases": kept, "test_cases": sorted(set(kept) & test),
                     "unlisted_cases": sorted(set(kept) - test),
                     "no_case_id": sum(1 for p in pairs if _case(p.stem, pattern) is None),
                     "left_out_seen_cases": dropped,
                     "left_out_images": len(pairs) - len(chosen)})
    else:
        pattern = re.compile(regex)
        ids = {_case(p.stem, pattern) for p in pairs}
        if None not in ids and len(ids) >= 3:
            split = split_by_case([p.stem for p in pairs], regex, (0.7, 0.15, 0.15), seed)
            test = set(split["test"])  # type: ignore[arg-type]
            chosen = [p for p in pairs if p.stem in test]
            info.update({"from": "the test part of the folder's own split by case (the card lists "
                                 "no cases)", "group_regex": regex, "split_seed": seed,
                         "fractions": [0.7, 0.15, 0.15],
                         "cases": sorted(split["test_cases"]),  # type: ignore[arg-type]
                         "test_cases": sorted(split["test_cases"]),  # type: ignore[arg-type]
                         "left_out_seen_cases": [], "left_out_images": len(pairs) - len(chosen)})
        else:
            chosen = list(pairs)
            info.update({"from": "every image (the card lists no cases, and the names carry no "
                                 "case id or too few cases to split)", "group_regex": regex,
                         "cases": sorted(c for c in ids if c is not None), "test_cases": [],
                         "left_out_seen_cases": [], "left_out_images": 0})
    if info["left_out_seen_cases"]:
        log.info("%s: %d case(s) the model trained or validated on left out (%d images)",
                 folder.name, len(info["left_out_seen_cases"]), info["left_out_images"])
    if not chosen:
        raise CocoPathError(f"{folder}: no image left whose case the model never trained on")
    info["images"] = len(chosen)
    return chosen, info


def is_negative(folder: Path, card: dict[str, Any] | None) -> bool:
    """Whether the card trained on ``folder`` (by name) as a negative: its truth is background."""
    return Path(folder).name in set(((card or {}).get("data") or {}).get("negatives") or ())


def load_tiles(pairs: Sequence[Pair], negative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(n, CELL, CELL, 3) uint8 images and (n, CELL, CELL) bool tumour masks (threshold 127; all
    False for a ``negative`` folder)."""
    from PIL import Image

    from engine.training.datasets import load_pair

    imgs = np.empty((len(pairs), CELL, CELL, 3), np.uint8)
    masks = np.empty((len(pairs), CELL, CELL), bool)
    for i, pair in enumerate(pairs):
        rgb, mask = load_pair(pair, negative=negative)
        if rgb.shape[:2] != (CELL, CELL):
            side = min(rgb.shape[:2])
            rgb, mask = rgb[:side, :side], mask[:side, :side]
            rgb = np.asarray(Image.fromarray(rgb).resize((CELL, CELL), Image.Resampling.BILINEAR))
            mask = np.asarray(Image.fromarray(mask).resize((CELL, CELL), Image.Resampling.NEAREST))
        imgs[i], masks[i] = rgb, mask > 0
    return imgs, masks


def _halve(a: np.ndarray) -> np.ndarray:
    """2×2 mean of an (h, w, 3) uint8 image (odd edges repeated)."""
    if a.shape[0] % 2 or a.shape[1] % 2:
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
    s = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 2) >> 2).astype(np.uint8)


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, tile: int = 256, quality: int = 95) -> Path:
    """A JPEG-tiled pyramidal TIFF of ``rgb`` (levels halved until one fits a tile), with µm/px."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        level, page = 0, rgb
        while True:
            res = 1e4 / (mpp * 2**level)  # pixels per centimetre
            tif.write(page, tile=(tile, tile), photometric="rgb", compression="jpeg",
                      compressionargs={"level": quality}, subfiletype=0 if level == 0 else 1,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
            if max(page.shape[:2]) <= tile:
                break
            page, level = _halve(page), level + 1
    tmp.replace(path)
    return path


def build_slide(out: Path, name: str, pairs: Sequence[Pair], *, mpp: float, border: int = 64,
                source: str = "", seed: int = 0, negative: bool = False) -> SimSlide:
    """A slide of the ``pairs`` tiles in a square mosaic (shuffled by ``seed``) on glass; the truth
    is the masks', or all background for a ``negative`` folder."""
    if not pairs:
        raise CocoPathError(f"slide {name}: no tiles to build it from")
    order = np.random.default_rng(seed).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    imgs, masks = load_tiles(pairs, negative)
    cols = math.ceil(math.sqrt(len(pairs)))
    rows = math.ceil(len(pairs) / cols)
    w, h = cols * CELL + 2 * border, rows * CELL + 2 * border
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = GLASS
    truth = np.zeros((h, w), bool)
    known = np.zeros((h, w), bool)
    for i in range(len(pairs)):
        r, c = divmod(i, cols)
        y, x = border + r * CELL, border + c * CELL
        rgb[y:y + CELL, x:x + CELL] = imgs[i]
        truth[y:y + CELL, x:x + CELL] = masks[i]
        known[y:y + CELL, x:x + CELL] = True
    path = write_pyramid(out / f"{name}.tif", rgb, mpp)
    log.info("slide %s: %d tiles, %d×%d px, tumour %.0f%%", name, len(pairs), w, h,
             100 * truth[known].mean())
    return SimSlide(name, path, truth, known, tuple(p.stem for p in pairs), source, mpp)


# -- where to look -------------------------------------------------------------------------------


def candidate_regions(slide: SimSlide, region_px: int, min_tissue: float = 0.5, steps: int = 4
                      ) -> list[tuple[int, int]]:
    """Corners (x, y) of the regions a pathologist could review: the same lattice as Review next
    (quarter-region steps, inside the slide), holding ``min_tissue`` of real tissue tiles."""
    w, h = slide.size
    step = region_px / steps
    known = np.zeros((h + 1, w + 1), np.int64)
    known[1:, 1:] = slide.known.cumsum(0).cumsum(1)
    out = []
    for j in range(math.floor((h - region_px) / step) + 1 if h >= region_px else 0):
        for i in range(math.floor((w - region_px) / step) + 1 if w >= region_px else 0):
            x, y = int(round(i * step)), int(round(j * step))
            n = (known[y + region_px, x + region_px] - known[y, x + region_px]
                 - known[y + region_px, x] + known[y, x])
            if n >= min_tissue * region_px * region_px:
                out.append((x, y))
    return out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def random_regions(slides: Sequence[SimSlide], region_px: int, k: int, seed: int = 0,
                   min_tissue: float = 0.5) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``k`` non-overlapping regions drawn uniformly among every slide's candidates:
    (slide index, (x, y, w, h))."""
    pool = [(s, xy) for s, slide in enumerate(slides)
            for xy in candidate_regions(slide, region_px, min_tissue)]
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, tuple[int, int, int, int]]] = []
    for idx in rng.permutation(len(pool)):
        s, (x, y) = pool[idx]
        rect = (x, y, region_px, region_px)
        if all(cs != s or not _overlap(rect, cr) for cs, cr in chosen):
            chosen.append((s, rect))
            if len(chosen) == k:
                break
    if len(chosen) < k:
        raise CocoPathError(f"the slides hold only {len(chosen)} separate {region_px}-pixel "
                            f"regions of tissue, not {k}")
    return chosen


# -- the pathologist's corrections -------------------------------------------------------------


def write_corrections(project: Any, slide: SimSlide, rects: Sequence[tuple[int, int, int, int]],
                      class_name: str) -> int:
    """Add one correction ROI per rectangle with the true ``class_name`` outline inside it (to the
    project's store of ``slide``); returns the number of annotations written."""
    from shapely.geometry import box

    from engine.annotations.model import Annotation, AnnotationClass, Kind
    from engine.inference.vectorize import mask_to_polygons

    if project.class_named(class_name) is None:
        project.set_class(AnnotationClass(class_name, (220, 30, 30)))
    record = project.add_slide(slide.path)
    anns = []
    for x, y, w, h in rects:
        anns.append(Annotation(box(x, y, x + w, y + h), kind=Kind.ROI, author=AUTHOR))
        for poly in mask_to_polygons(slide.truth[y:y + h, x:x + w], 1.0, origin=(x, y)):
            anns.append(Annotation(poly, class_name=class_name, author=AUTHOR))
    if anns:
        project.store(record).add(anns, label=f"reviewed {len(rects)} region(s)")
    return len(anns)


def roi_mask(slide: SimSlide, rects: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(H, W) bool: pixels inside any of ``rects``."""
    m = np.zeros(slide.truth.shape, bool)
    for x, y, w, h in rects:
        m[max(0, y):y + h, max(0, x):x + w] = True
    return m


# -- the model's view ----------------------------------------------------------------------------


def predict(slide_path: Path, model_path: Path, cache_dir: Path, *, device: str = "auto",
            batch_size: int = 4) -> PredictionCache:
    """Run the checkpoint over the whole slide into a prediction cache at ``cache_dir``."""
    from engine.inference.geometry import make_grid
    from engine.inference.pipeline import SlideInference, tissue_tiles
    from engine.inference.runner import make_runner
    from engine.inference.spec import load_spec
    from engine.slide import open_slide
    from engine.slide.tissue import detect_tissue
    from engine.training.checkpoints import load_model

    spec = load_spec(model_path)
    model, _ = load_model(model_path)
    runner = make_runner(model, spec, spec.tile, backend="torch", device=device,
                         batch_size=batch_size)
    margin = min(32, (spec.tile - 32) // 2)
    with open_slide(slide_path) as slide:
        grid = make_grid(slide.info, spec.mpp, tile=spec.tile, margin=margin)
        cache = PredictionCache.open(cache_dir, grid, spec.version, len(spec.foreground),
                                     tissue_tiles(grid, detect_tissue(slide)), spec.card())
        result = SlideInference(slide, grid, cache, runner, batch_size=batch_size, readers=1,
                                flush_s=None).run()
    if result.status != "done":
        raise CocoPathError(f"{slide_path}: prediction stopped ({result.status})")
    return cache


def confusion(cache: PredictionCache, slide: SimSlide, where: np.ndarray, classes: int = 2
              ) -> np.ndarray:
    """(classes, classes) confusion matrix (rows: truth) of the cached prediction against the truth,
    over the level-0 pixels ``where``, compared at the prediction's resolution (nearest truth pixel
    at each prediction pixel's centre), one cache tile at a time."""
    from engine.inference.vectorize import labels_from_probs
    from engine.training.metrics import ConfusionMatrix

    cm = ConfusionMatrix(classes)
    w, h = slide.size
    ds, t = cache.grid.downsample, cache.tile
    for c, r in cache.grid.tiles():
        xs = ((c * t + np.arange(t) + 0.5) * ds).astype(np.int64)
        ys = ((r * t + np.arange(t) + 0.5) * ds).astype(np.int64)
        xs, ys = xs[xs < w], ys[ys < h]
        if not len(xs) or not len(ys):
            continue
        sel = where[ys[:, None], xs[None, :]]
        if not sel.any():
            continue
        tile = cache.read_tile(0, c, r)
        pred = (np.zeros((len(ys), len(xs)), np.uint8) if tile is None
                else labels_from_probs(tile[:len(ys), :len(xs)]))
        truth = slide.truth[ys[:, None], xs[None, :]].astype(np.uint8)
        cm.update(truth[sel], pred[sel])
    return cm.matrix


def summarize(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, Dice, pixel accuracy of a confusion matrix (as ``engine.training.metrics``)."""
    from engine.training.metrics import ConfusionMatrix

    cm = ConfusionMatrix(matrix.shape[0])
    cm.matrix = matrix.astype(np.int64)
    return cm.summary(list(class_names))
