"""A round's data, gathered from a project: labelled patches from the correction ROIs, unlabelled
tissue patches for distillation, and held-out ROIs to measure the round. No torch here.

- **Resolution**: patches are cut at the model's µm/px (its card's ``input.mpp``, the slide's own
  µm/px giving the downsample); without one on either side, at the slide's level 0 (and the round
  says so).
- **Labels**: inside a correction ROI, every pixel is labelled (the class of the annotation over it,
  else background); outside every ROI it is :data:`IGNORE`. Project classes are matched to the
  model's classes by name (see :func:`class_lut`).
- **Held-out ROIs, by region**: ROIs that touch (or nearly) form one region; whole regions are held
  out, never patches of one region on both sides. With a single region, it is cut in two across its
  longer side, with a gap. A training patch never shows a held-out region: any of its pixels
  within the held-out zone (held-out geometry grown by half the gap) is blanked to the mean colour
  and unlabelled, and unlabelled tissue patches that meet the zone are not taken.
- **The slides nobody corrected**: a few tissue patches of each project slide without a correction
  ROI in the round (:data:`OTHERS_PER_SLIDE`, at most :data:`MAX_OTHER_SLIDES` slides: those the
  round is told to check first, then the project's order), never trained on: the round measures
  how much its new version changes their masks (:mod:`engine.finetune.elsewhere`), since nothing
  else it checks would see it. A few more of each (:data:`ANCHORS_PER_SLIDE`, apart from the
  checked ones) join the unlabelled patches, where the parent's answer is the target: on the real
  slides, a round on one slide's benign skin erased the carcinoma of another without them and kept
  it with them (README).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from engine.annotations.mask import rasterize
from engine.annotations.model import Annotation, Kind
from engine.annotations.rois import IGNORE, partial_label_mask
from engine.errors import CocoPathError
from engine.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

#: Most patches cut from one region (a huge ROI is sampled, not tiled whole).
MAX_PATCHES_PER_REGION = 48
#: A region patch must overlap its region by at least this share of its footprint.
MIN_REGION_OVERLAP = 0.02
#: Tissue patches cut from each slide nobody corrected in the round (what its masks are checked on).
OTHERS_PER_SLIDE = 6
#: Most slides nobody corrected that a round checks (the first ones of the project).
MAX_OTHER_SLIDES = 8
#: Other tissue patches of each slide nobody corrected, apart from the checked ones, where the
#: parent's answer is the target (unlabelled patches).
ANCHORS_PER_SLIDE = 4
_SYNONYMS = {"tumor": "tumour", "tumours": "tumour", "tumors": "tumour", "cancer": "tumour",
             "carcinoma": "tumour", "normal": "background", "non-tumour": "background",
             "non-tumor": "background", "other": "background"}


class RoundDataError(CocoPathError):
    """The project cannot give a round its data (slide missing, classes that do not fit, …)."""


@dataclass(frozen=True)
class Region:
    """A region of reviewed tissue: one or more touching correction ROIs (or a part of one)."""

    key: str
    slide_id: int
    roi_ids: tuple[str, ...]
    geometry: BaseGeometry  # level-0 pixels

    def as_roi(self) -> Annotation:
        return Annotation(self.geometry, kind=Kind.ROI)


@dataclass
class Patch:
    """One network input with its labels (model class indices; :data:`IGNORE` where unknown)."""

    rgb: np.ndarray  # (patch, patch, 3) uint8
    label: np.ndarray  # (patch, patch) uint8
    slide_id: int
    region: str | None  # the region it was cut from (None: an unlabelled tissue patch)
    x: int  # level-0 origin
    y: int
    footprint: float  # level-0 pixels per side
    tissue: np.ndarray | None = None  # (patch, patch) bool: where it shows tissue (slides nobody corrected)

    @property
    def labelled_pixels(self) -> int:
        return int((self.label != IGNORE).sum())


@dataclass
class RoundData:
    train: list[Patch]
    unlabelled: list[Patch]
    heldout: list[Patch]
    train_regions: list[Region]
    heldout_regions: list[Region]
    slides: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    mpp: float | None = None  # µm/px of the patches, when known
    classes: list[str] = field(default_factory=list)  # the model's classes, then the new ones learnt
    others: list[Patch] = field(default_factory=list)  # tissue of the slides nobody corrected: checked only
    other_slides: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name"} of each checked

    def summary(self) -> dict[str, Any]:
        """What the round was trained and measured on (for the version's card)."""
        def rois(regions: Sequence[Region]) -> list[str]:
            return sorted({r for reg in regions for r in reg.roi_ids})

        return {
            "slides": self.slides,
            "train_rois": rois(self.train_regions), "heldout_rois": rois(self.heldout_regions),
            "train_regions": [r.key for r in self.train_regions],
            "heldout_regions": [r.key for r in self.heldout_regions],
            "patches": {"labelled": len(self.train), "unlabelled": len(self.unlabelled),
                        "heldout": len(self.heldout), "elsewhere": len(self.others)},
            "elsewhere": [dict(s) for s in self.other_slides],
            "pixels": {"labelled": sum(p.labelled_pixels for p in self.train),
                       "heldout": sum(p.labelled_pixels for p in self.heldout)},
            "mpp": self.mpp, "notes": list(self.notes), "classes": list(self.classes),
        }


# -- classes ----------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    n = name.strip().casefold()
    return _SYNONYMS.get(n, n)


def class_lut(project_classes: Sequence[str], model_classes: Sequence[str],
              used: set[str] | None = None, new_classes: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """A 256-entry table from project labels (0 background, i+1 = project class i, 255 unknown) to
    the model's class indices, and notes on the choices made (about the ``used`` classes only;
    default: all).

    Classes match by name only (case-insensitive; "tumor", "carcinoma", "cancer" count as
    "tumour"), never by position nor because a class is the only one drawn. ``new_classes``: project
    classes the model lacks that the round adds as new output classes, after the model's own (see
    :func:`extended_classes`). For a two-class model (background + one class) any other project
    class that matches neither — Stroma, Necrosis, Lesion — is background ("not tumour"): what the
    pathologist outlined is learnt as not being the model's class. For a larger model, unmatched
    classes are ignored.
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[0] = 0
    used = set(project_classes) if used is None else set(used)
    binary = len(model_classes) == 2
    added = extended_classes(model_classes, new_classes)[len(model_classes):]
    model_norm = [_norm(c) for c in model_classes] + [_norm(c) for c in added]
    notes: list[str] = []
    matched = {i: model_norm.index(_norm(n)) for i, n in enumerate(project_classes)
               if _norm(n) in model_norm}
    active = [i for i, n in enumerate(project_classes) if n in used]
    if binary and active and not any(matched.get(i) == 1 for i in active):
        names = ", ".join(repr(project_classes[i]) for i in active)
        notes.append(f"no annotated class is named {model_classes[1]!r} ({names} drawn): the round "
                     f"learns only what is not {model_classes[1]}")
    for i, name in enumerate(project_classes):
        if i in matched:
            lut[i + 1] = matched[i]
            if i in active and matched[i] >= len(model_classes):
                notes.append(f"class {name!r} becomes a new output class of the model "
                             f"(not {model_classes[1]} either)" if binary else
                             f"class {name!r} becomes a new output class of the model")
        elif binary:
            lut[i + 1] = 0
            if i in active:
                notes.append(f"class {name!r} is taken as {model_classes[0]!r} "
                             f"(not {model_classes[1]})")
        elif i in active:
            notes.append(f"class {name!r} is not one of the model's classes "
                         f"({', '.join(model_classes)}): its pixels are ignored")
    return lut, notes


def missing_classes(model_classes: Sequence[str], names: Iterable[str]) -> list[str]:
    """Those of ``names`` (project classes) that match none of the model's classes by name: what a
    round may add as new output classes (in the order given)."""
    have = {_norm(c) for c in model_classes}
    return [n for n in names if _norm(n) not in have]


def extended_classes(model_classes: Sequence[str], new_classes: Sequence[str]) -> list[str]:
    """The model's classes followed by those of ``new_classes`` it lacks (by name, as
    :func:`class_lut` matches them; in the order given, each once)."""
    out = list(model_classes)
    seen = {_norm(c) for c in out}
    for name in new_classes:
        if _norm(name) not in seen:
            out.append(str(name))
            seen.add(_norm(name))
    return out


def new_class_merge(model_classes: Sequence[str], extended: Sequence[str]) -> list[int]:
    """For each class of ``extended``, the model class that stands for it where only the model's
    own classes exist (the parent's predictions, the base training data's masks): itself for the
    model's classes, background (0) for a new one — for a tumour/background model a new class is
    not tumour."""
    return [i if i < len(model_classes) else 0 for i in range(len(extended))]


# -- regions and the held-out split -------------------------------------------------------------------

def cluster_rois(rois: Sequence[Annotation], slide_id: int, gap: float) -> list[Region]:
    """Group ROIs closer than ``gap`` level-0 pixels into regions (connected components)."""
    n = len(rois)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        tree = shapely.STRtree([r.geometry for r in rois])
        for i, r in enumerate(rois):
            for j in tree.query(r.geometry, predicate="dwithin", distance=gap):
                a, b = find(i), find(int(j))
                if a != b:
                    parent[b] = a
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    regions = []
    for members in groups.values():
        ids = tuple(sorted(rois[i].uuid for i in members))
        geom = shapely.union_all([rois[i].geometry for i in members])
        regions.append(Region(f"{slide_id}:{ids[0][:8]}" + (f"+{len(ids) - 1}" if len(ids) > 1 else ""),
                              slide_id, ids, geom))
    return sorted(regions, key=lambda r: r.key)


def split_region(region: Region, holdout: float, gap_share: float = 0.05) -> tuple[Region, Region, float]:
    """Cut one region across its longer side: (train part, held-out part, gap in level-0 pixels).

    The held-out part is the last ``holdout`` of the extent; a gap of ``gap_share`` of the extent
    (centred on the cut) belongs to neither."""
    x0, y0, x1, y1 = region.geometry.bounds
    horizontal = (x1 - x0) >= (y1 - y0)
    lo, hi = (x0, x1) if horizontal else (y0, y1)
    extent = hi - lo
    gap = max(gap_share * extent, 2.0)
    cut = hi - holdout * extent
    a, b = cut - gap / 2, cut + gap / 2
    if horizontal:
        first, second = box(x0 - 1, y0 - 1, a, y1 + 1), box(b, y0 - 1, x1 + 1, y1 + 1)
    else:
        first, second = box(x0 - 1, y0 - 1, x1 + 1, a), box(x0 - 1, b, x1 + 1, y1 + 1)
    train = region.geometry.intersection(first)
    held = region.geometry.intersection(second)
    if train.area <= 0 or held.area <= 0:
        raise RoundDataError(f"the only correction ROI is too small to hold part of it out; draw "
                             f"a larger one or a second one")
    return (Region(region.key + "/train", region.slide_id, region.roi_ids, train),
            Region(region.key + "/heldout", region.slide_id, region.roi_ids, held), gap)


#: Fewest reviewed regions from which whole regions are held out; with fewer, each is cut in two.
MIN_WHOLE_REGIONS = 4


def split_regions(regions: Sequence[Region], holdout: float, seed: int,
                  kinds: Mapping[str, Hashable] | None = None
                  ) -> tuple[list[Region], list[Region], float, str | None]:
    """(train, held out, gap, note).

    With :data:`MIN_WHOLE_REGIONS` or more regions, whole regions are held out: a seeded order is
    walked and regions join the held-out side while they bring its share of the ROIs' *area* nearer
    ``holdout`` (never past 1.5×), at least one each side. Choosing by count instead let one large
    region be held out with the small ones trained on (a real round on tcga-cr-7395: 87 % of the
    drawn area held out, and a Stroma band never learnt). With fewer regions, or when no choice of
    whole regions comes within half of ``holdout``, every region is cut across its longer side and
    its last ``holdout`` held out (:func:`split_region`), so each class drawn is learnt and checked.

    ``kinds`` (region key → its kind: the slide and the classes it teaches, see
    :meth:`SlideCutter.classes_in`): a region is held out whole only while another of its kind stays
    to be learnt, and one of each kind that has two or more is held out first, so it is checked
    too. Without it, choosing by area alone held out all three septa a pathologist had marked as
    background on tcga-cr-7395 (the smallest regions fill the share first): the round never
    learnt them, and no step beat the parent.
    """
    if not 0 < holdout < 1:
        raise RoundDataError(f"the held-out share must be between 0 and 1, not {holdout}")
    regions = sorted(regions, key=lambda r: (r.slide_id, r.geometry.bounds))  # not by random ids
    n = len(regions)
    if n >= MIN_WHOLE_REGIONS:
        areas = np.array([r.geometry.area for r in regions], dtype=float)
        total = float(areas.sum()) or 1.0
        kind = [(kinds or {}).get(r.key, r.key if kinds else None) for r in regions]
        left = Counter(kind)  # regions of each kind still on the training side
        order = np.random.default_rng(seed).permutation(n).tolist()
        held_i: list[int] = []
        share = 0.0
        for first in (True, False):  # one of each kind first, then up to the share
            for i in order:
                if (share >= holdout and not first) or len(held_i) == n - 1:
                    break
                if i in held_i or left[kind[i]] < 2 or share + areas[i] / total > 1.5 * holdout:
                    continue
                if first and any(kind[j] == kind[i] for j in held_i):
                    continue
                if not first and abs(share + areas[i] / total - holdout) >= abs(share - holdout):
                    continue  # past the first of each kind, a region joins only to come nearer the share
                held_i.append(i)
                left[kind[i]] -= 1
                share += areas[i] / total
        if held_i and share >= holdout / 2:
            held = sorted((regions[i] for i in held_i), key=lambda r: r.key)
            train = sorted((r for i, r in enumerate(regions) if i not in held_i), key=lambda r: r.key)
            return train, held, 0.0, None
    return _cut_each(regions, holdout)


def _cut_each(regions: Sequence[Region], holdout: float) -> tuple[list[Region], list[Region], float, str]:
    train: list[Region] = []
    held: list[Region] = []
    gaps: list[float] = []
    for region in regions:
        try:
            t, h, gap = split_region(region, holdout)
        except RoundDataError:
            if len(regions) == 1:
                raise
            train.append(region)  # too small to cut: learnt whole
            continue
        train.append(t)
        held.append(h)
        gaps.append(gap)
    if not held:
        raise RoundDataError("the correction ROIs are too small to hold part of them out; draw a larger one")
    gap = max(gaps)
    if len(regions) == 1:
        note = (f"a single reviewed region: its last {holdout:.0%} across its longer side is held "
                f"out, with a gap of {gap:.0f} px")
    else:
        note = (f"{len(regions)} reviewed regions: the last {holdout:.0%} of each across its longer side "
                f"is held out, with a gap of up to {gap:.0f} px")
    return train, held, gap, note


# -- patches ---------------------------------------------------------------------------------------

def region_positions(geometry: BaseGeometry, footprint: float, slide_size: tuple[int, int],
                     rng: np.random.Generator, limit: int = MAX_PATCHES_PER_REGION) -> list[tuple[int, int]]:
    """Level-0 origins of square patches (side ``footprint``) tiling the region's bounding box,
    each meeting the region, at most ``limit`` (a seeded sample)."""
    x0, y0, x1, y1 = geometry.bounds
    w, h = slide_size

    def starts(lo: float, hi: float, size: int) -> list[float]:
        if hi - lo <= footprint:
            s = [(lo + hi) / 2 - footprint / 2]
        else:
            n = math.ceil((hi - lo) / footprint)
            s = list(np.linspace(lo, hi - footprint, n))
        return [min(max(v, 0.0), max(size - footprint, 0.0)) for v in s]

    out = []
    for y in starts(y0, y1, h):
        for x in starts(x0, x1, w):
            cell = box(x, y, x + footprint, y + footprint)
            if geometry.intersection(cell).area >= MIN_REGION_OVERLAP * footprint * footprint:
                out.append((int(round(x)), int(round(y))))
    if len(out) > limit:
        keep = sorted(rng.choice(len(out), limit, replace=False))
        out = [out[i] for i in keep]
    return out


def mean_rgb(mean: Sequence[float]) -> np.ndarray:
    return np.array([round(255 * m) for m in mean], dtype=np.uint8)


class SlideCutter:
    """Cuts patches of one slide at the round's resolution, labelled by one side's regions."""

    def __init__(self, slide: Any, record: Any, annotations: Sequence[Annotation], classes: Sequence[Any],
                 lut: np.ndarray, patch: int, model_mpp: float | None, fill: np.ndarray) -> None:
        from engine.inference.geometry import make_grid

        self.slide, self.record, self.patch = slide, record, patch
        self.grid = make_grid(slide.info, model_mpp, tile=patch, margin=0)
        self.ds = self.grid.downsample
        self.footprint = patch * self.ds
        self.regions = [a for a in annotations if not a.is_roi]
        self.tree = shapely.STRtree([a.geometry for a in self.regions]) if self.regions else None
        self.classes, self.lut, self.fill = list(classes), lut, fill

    def read(self, x: int, y: int) -> np.ndarray:
        from engine.slide.request import RegionRequest

        g = self.grid
        size = self.patch if not g.resampled else math.ceil(self.patch * g.downsample / g.read_downsample)
        rgb = self.slide.read_rgb(RegionRequest(g.slide, g.read_level, x, y, size, size))
        if g.resampled:
            from PIL import Image

            span = self.patch * g.downsample / g.read_downsample
            rgb = np.asarray(Image.fromarray(rgb).resize((self.patch, self.patch), Image.Resampling.BILINEAR,
                                                         box=(0, 0, span, span)))
        return np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)

    def labels(self, x: int, y: int, side: Sequence[Region]) -> np.ndarray:
        """Model labels of the patch at (x, y) from the regions of one side (others: IGNORE)."""
        f = self.footprint
        near = [self.regions[i] for i in np.sort(self.tree.query(box(x, y, x + f, y + f)))] if self.tree else []
        rois = [r.as_roi() for r in side if r.geometry.intersects(box(x, y, x + f, y + f))]
        raw = partial_label_mask(near + rois, self.classes, x, y, self.patch, self.patch, self.ds)
        return self.lut[raw]

    def classes_in(self, region: Region, size: int = 96, least: float = 0.02) -> frozenset[int]:
        """The model classes ``region`` teaches: those on at least ``least`` of its labelled pixels,
        read from its labels drawn ``size`` pixels across (background: reviewed, nothing drawn)."""
        x0, y0, x1, y1 = region.geometry.bounds
        ds = max(x1 - x0, y1 - y0, 1.0) / size
        w, h = max(1, math.ceil((x1 - x0) / ds)), max(1, math.ceil((y1 - y0) / ds))
        near = ([self.regions[i] for i in np.sort(self.tree.query(box(x0, y0, x1, y1)))]
                if self.tree else [])
        raw = partial_label_mask(near + [region.as_roi()], self.classes, x0, y0, w, h, ds)
        label = self.lut[raw]
        label = label[label != IGNORE]
        if not label.size:
            return frozenset()
        counts = np.bincount(label.astype(np.int64))
        return frozenset(int(c) for c in np.flatnonzero(counts >= least * label.size))

    def zone_mask(self, x: int, y: int, zone: BaseGeometry | None) -> np.ndarray | None:
        """Pixels of the patch inside ``zone`` (None when it does not meet the patch)."""
        f = self.footprint
        if zone is None or zone.is_empty or not zone.intersects(box(x, y, x + f, y + f)):
            return None
        m = rasterize([(Annotation(zone, kind=Kind.ROI), 1)], x, y, self.patch, self.patch, self.ds) > 0
        return m if m.any() else None

    def cut(self, x: int, y: int, side: Sequence[Region], zone: BaseGeometry | None,
            region: str | None) -> Patch:
        rgb, label = self.read(x, y), self.labels(x, y, side)
        hidden = self.zone_mask(x, y, zone)
        if hidden is not None:  # a training patch never shows the held-out zone
            rgb = rgb.copy()
            rgb[hidden] = self.fill
            label[hidden] = IGNORE
        return Patch(rgb, label, self.record.id, region, x, y, self.footprint)


def tissue_positions(tissue: Any, slide_size: tuple[int, int], footprint: float, count: int,
                     avoid: BaseGeometry | None, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``count`` random origins of patches that are mostly tissue and miss ``avoid``."""
    w, h = slide_size
    out: list[tuple[int, int]] = []
    for _ in range(60 * max(count, 1)):
        if len(out) >= count:
            break
        x = int(rng.uniform(0, max(w - footprint, 0)))
        y = int(rng.uniform(0, max(h - footprint, 0)))
        if not tissue.covers(x, y, footprint, footprint, min_fraction=0.5):
            continue
        if avoid is not None and not avoid.is_empty and avoid.intersects(box(x, y, x + footprint, y + footprint)):
            continue
        out.append((x, y))
    return out


@dataclass(frozen=True)
class GatherOptions:
    patch: int = 256
    holdout: float = 0.25
    unlabelled_per_roi: int = 4
    seed: int = 0
    slides: tuple[str, ...] | None = None
    force: bool = False  # learn from a slide far coarser than the model reads (else refused)
    new_classes: tuple[str, ...] = ()  # project classes learnt as new output classes (see class_lut)
    others_per_slide: int = OTHERS_PER_SLIDE  # tissue patches of each slide nobody corrected (0: none)
    anchors_per_slide: int = ANCHORS_PER_SLIDE  # more of them, with the parent as the target (0: none)
    check_first: tuple[str, ...] = ()  # slides nobody corrected to check first (the app: those viewed last)


def gather(project_dir: Path, card: dict[str, Any], opts: GatherOptions,
           progress: Callable[[Progress], None] | None = None,
           cancel: CancelToken | None = None) -> RoundData | None:
    """Read the project's correction ROIs and cut the round's patches; None when there is nothing
    to learn (no correction ROI on the chosen slides)."""
    from engine.annotations.project import Project

    if opts.patch % 32 or opts.patch < 64:
        raise RoundDataError(f"patch size {opts.patch} must be a multiple of 32, at least 64")
    model_classes = list(card.get("classes") or ["background", "tumour"])
    model_mpp = (card.get("input") or {}).get("mpp")
    with Project.open(project_dir, quick_check=False) as project:
        records = ([project.slide(s) for s in opts.slides] if opts.slides is not None
                   else project.slides())
        per_slide = []
        notes: list[str] = []
        chosen = {r.id for r in records}
        # slides with no correction ROI in the round: their masks are checked
        others = [rec for rec in project.slides() if rec.id not in chosen]
        for rec in records:
            store = project.store(rec)
            rois = store.rois()
            if not rois:
                others.append(rec)
                if opts.slides is not None:
                    notes.append(f"{rec.name} has no correction ROI")
                continue
            if not rec.exists:
                raise RoundDataError(f"{rec.path}: the slide {rec.name} is missing; relink it "
                                     f"(`cocopath-engine project relink`) or leave it out")
            per_slide.append((rec, rois, store.annotations(Kind.REGION)))
        others = _checked_first(project, others, opts.check_first, notes)
        classes = project.classes()
    if not per_slide:
        return None
    used = {a.class_name for _, _, anns in per_slide for a in anns if a.class_name}
    new = [n for n in opts.new_classes if n in used]  # a class nobody drew cannot be learnt
    for n in opts.new_classes:
        if n not in used:
            notes.append(f"class {n!r} is not drawn on the slides of the round: no new output class for it")
    lut, class_notes = class_lut([c.name for c in classes], model_classes, used, new)
    notes += class_notes
    data = _cut_all(per_slide, classes, lut, card, model_mpp, opts, notes, progress, cancel)
    data.classes = extended_classes(model_classes, new)
    if opts.others_per_slide > 0 or opts.anchors_per_slide > 0:
        _cut_others(data, others, classes, lut, card, model_mpp, opts, cancel)
    return data


def _cut_all(per_slide: list, classes: Sequence[Any], lut: np.ndarray, card: dict[str, Any],
             model_mpp: float | None, opts: GatherOptions, notes: list[str],
             progress: Callable[[Progress], None] | None, cancel: CancelToken | None) -> RoundData:
    from engine.slide import open_slide
    from engine.slide.tissue import detect_tissue

    rng = np.random.default_rng(opts.seed)
    fill = mean_rgb((card.get("input") or {}).get("mean") or (0.485, 0.456, 0.406))
    slides = [(rec, rois, anns, open_slide(rec.path)) for rec, rois, anns in per_slide]
    try:
        _check_resolution(slides, model_mpp, opts.force, notes)
        cutters = {rec.id: SlideCutter(src, rec, anns, classes, lut, opts.patch, model_mpp, fill)
                   for rec, _, anns, src in slides}
        regions: list[Region] = []
        for rec, rois, _, _ in slides:
            regions += cluster_rois(rois, rec.id, gap=cutters[rec.id].footprint / 4)
        kinds = {r.key: (r.slide_id, cutters[r.slide_id].classes_in(r)) for r in regions}
        train_r, held_r, gap, note = split_regions(regions, opts.holdout, opts.seed, kinds)
        if note:
            notes.append(note)
        grids = {c.grid.note for c in cutters.values() if c.grid.note}
        if model_mpp is None:
            notes.append("the model's card has no µm/px: patches were cut at each slide's level 0")
        else:
            notes += sorted(grids)
        data = RoundData([], [], [], train_r, held_r, [], notes, float(model_mpp) if model_mpp else None)
        work = [(r, "train") for r in train_r] + [(r, "heldout") for r in held_r]
        total = len(work) + len(slides)
        done = 0
        for region, side in work:
            _check(cancel)
            cutter = cutters[region.slide_id]
            same_slide = held_r if side == "train" else train_r
            side_regions = [r for r in (train_r if side == "train" else held_r) if r.slide_id == region.slide_id]
            zone = None
            if side == "train":
                zone_parts = [r.geometry for r in same_slide if r.slide_id == region.slide_id]
                zone = shapely.union_all(zone_parts).buffer(gap / 2) if zone_parts else None
            for x, y in region_positions(region.geometry, cutter.footprint, cutter.slide.info.dimensions, rng):
                p = cutter.cut(x, y, side_regions, zone, region.key)
                if p.labelled_pixels:
                    (data.train if side == "train" else data.heldout).append(p)
            done += 1
            if progress:
                progress(Progress("gather", done, total, message=f"region {region.key}"))
        for rec, _, _, src in slides:
            _check(cancel)
            cutter = cutters[rec.id]
            n_train = sum(1 for r in train_r if r.slide_id == rec.id)
            held_here = [r.geometry for r in held_r if r.slide_id == rec.id]
            avoid = shapely.union_all(held_here).buffer(max(gap / 2, 1.0)) if held_here else None
            count = opts.unlabelled_per_roi * n_train
            if count:
                tissue = detect_tissue(src)
                train_here = [r for r in train_r if r.slide_id == rec.id]
                for x, y in tissue_positions(tissue, src.info.dimensions, cutter.footprint, count, avoid, rng):
                    data.unlabelled.append(cutter.cut(x, y, train_here, avoid, None))
            data.slides.append({"id": rec.id, "name": rec.name, "path": rec.path,
                                "downsample": cutter.ds, "level": cutter.grid.read_level})
            done += 1
            if progress:
                progress(Progress("gather", done, total, message=f"tissue of {rec.name}"))
    finally:
        for *_, src in slides:
            src.close()
    if not data.heldout:
        raise RoundDataError("the held-out ROIs gave no labelled pixels; draw another correction ROI")
    if not data.train:
        raise RoundDataError("the training ROIs gave no labelled pixels; draw another correction ROI")
    log.info("round data: %s", data.summary()["patches"])
    return data


def _checked_first(project: Any, others: list, refs: Sequence[str], notes: list[str]) -> list:
    """``others`` with the slides named in ``refs`` first, in that order, the rest in the project's
    order: a round checks at most :data:`MAX_OTHER_SLIDES`, so the app names the slides the
    pathologist viewed last. A name that is not a slide of the project is noted, not an error."""
    from engine.annotations.errors import ProjectError

    rank: dict[int, int] = {}
    for ref in refs:
        try:
            rank.setdefault(project.slide(ref).id, len(rank))
        except ProjectError as exc:  # not in the project, or a name two slides share
            notes.append(f"{str(exc).split(';')[0]}: not checked first")
    return sorted(others, key=lambda rec: rank.get(rec.id, len(rank)))


def _cut_others(data: RoundData, records: Sequence[Any], classes: Sequence[Any], lut: np.ndarray,
                card: dict[str, Any], model_mpp: float | None, opts: GatherOptions,
                cancel: CancelToken | None) -> None:
    """Tissue patches of the slides nobody corrected (see the module docstring); a slide that is
    missing, unreadable, far too coarse for the model or without tissue is left out, and said so."""
    from engine.slide import open_slide
    from engine.slide.resolution import resolution_problem
    from engine.slide.tissue import detect_tissue, detect_tissue_rgb

    rng = np.random.default_rng((opts.seed, 31))
    fill = mean_rgb((card.get("input") or {}).get("mean") or (0.485, 0.456, 0.406))
    left: list[str] = []
    for rec in records:
        _check(cancel)
        if len(data.other_slides) >= MAX_OTHER_SLIDES:
            left.append(rec.name)
            continue
        if not rec.exists:
            data.notes.append(f"{rec.name} is missing: its mask was not checked")
            continue
        try:
            src = open_slide(rec.path)
        except CocoPathError as exc:
            data.notes.append(f"{rec.name} could not be read, its mask was not checked: {exc}")
            continue
        try:
            problem = resolution_problem(max(src.info.mpp) if src.info.mpp else None, model_mpp)
            if problem is not None:  # the model's masks there are not meaningful anyway
                data.notes.append(f"{rec.name}: {problem}; its mask was not checked")
                continue
            cutter = SlideCutter(src, rec, [], classes, lut, opts.patch, model_mpp, fill)
            tissue = detect_tissue(src)
            spots = tissue_positions(tissue, src.info.dimensions, cutter.footprint, opts.others_per_slide, None, rng)
            for x, y in spots:
                p = cutter.cut(x, y, [], None, None)
                p.tissue = detect_tissue_rgb(p.rgb)
                if p.tissue.any():
                    data.others.append(p)
            if opts.anchors_per_slide > 0:  # the parent as the target there, never on a checked patch
                f = cutter.footprint
                checked = shapely.union_all([box(x, y, x + f, y + f) for x, y in spots]) if spots else None
                for x, y in tissue_positions(tissue, src.info.dimensions, f, opts.anchors_per_slide, checked, rng):
                    data.unlabelled.append(cutter.cut(x, y, [], None, None))
            if any(p.slide_id == rec.id for p in data.others):
                data.other_slides.append({"id": rec.id, "name": rec.name})
        finally:
            src.close()
    if left:
        data.notes.append(f"the masks of {len(left)} more slide{'s' if len(left) != 1 else ''} nobody corrected "
                          f"were not checked (a round checks {MAX_OTHER_SLIDES}): {', '.join(left)}")


def _check_resolution(slides: list, model_mpp: float | None, force: bool, notes: list[str]) -> None:
    """Refuse (or, with ``force``, note) a slide far coarser than the model reads."""
    from engine.slide.resolution import resolution_problem

    for rec, _, _, src in slides:
        problem = resolution_problem(max(src.info.mpp) if src.info.mpp else None, model_mpp)
        if problem is None:
            continue
        if not force:
            raise RoundDataError(f"{rec.name}: {problem}; leave it out of the round, or fine-tune on it "
                                 f"anyway with --force")
        notes.append(f"{rec.name}: {problem} (fine-tuned on it anyway: --force)")


class GatherCancelled(Exception):
    """Raised inside :func:`gather` when its cancel token is set."""


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise GatherCancelled()
