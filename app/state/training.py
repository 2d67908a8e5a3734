"""What the training, models and review docks show, Qt-free: a round's curves and progress, its
result, the registry's table rows, and where "Review next" takes the view.

A fine-tuning round runs in a subprocess (:mod:`app.finetune_bridge`); each line it prints is a
``FinetuneEvent`` (kind ``progress`` / ``eval`` / ``result`` / ``error`` / ``log``, with a dict of
data). :class:`RoundCurves` folds those events into the series the plots draw and the text the
progress line shows; :func:`result_rows` turns the round's result into the before / after table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.state.versions import Comparison, finite_number, comparisons_from_guard
from app.state.viewport import Viewport

#: Held-out measures shown before / after, in this order, with their display names.
RESULT_METRICS = (("miou", "Held-out mIoU"), ("dice", "Held-out Dice"))


def format_seconds(seconds: float | None) -> str:
    """"45 s", "3 min 05 s", "1 h 02 min"; "" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class RoundCurves:
    """A round's live state, built from its events in order.

    ``losses`` maps a curve's label to its (x, value) points, where x counts progress events across
    the stages of the round (the teacher's adaptation, then the student's training), so the curves
    of successive stages follow each other on one axis; a stage's terms are labelled with the stage
    once a second stage has shown up. ``heldout`` holds (x, held-out mIoU) of the ``eval`` events.
    """

    losses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    heldout: list[tuple[float, float]] = field(default_factory=list)
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""  # what the stage is doing, when the round says
    x: int = 0  # progress events so far (the plots' x)
    stages: list[str] = field(default_factory=list)  # stages that sent loss terms, in order

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def label(self, stage: str, term: str) -> str:
        return term if len(self.stages) <= 1 else f"{stage}: {term}"

    def add_progress(self, data: Mapping[str, Any]) -> None:
        stage = str(data.get("stage") or "training")
        metrics = data.get("metrics") or {}
        terms = {str(k): v for k, v in (metrics.items() if isinstance(metrics, Mapping) else ())
                 if finite_number(v) is not None}
        if terms and stage not in self.stages:  # a stage that trains (data, publish: no curves)
            self.stages.append(stage)
            if len(self.stages) == 2:  # from now on terms carry their stage: rename the first's
                first = self.stages[0]
                self.losses = {f"{first}: {k}": v for k, v in self.losses.items()}
        self.stage = stage
        self.step = int(finite_number(data.get("step")) or 0)
        self.total = int(finite_number(data.get("total")) or 0)
        self.eta_s = finite_number(data.get("eta_s"))
        self.message = str(data.get("message") or "")
        self.x += 1
        for term, value in terms.items():
            self.losses.setdefault(self.label(stage, term), []).append((self.x, float(value)))

    def add_eval(self, data: Mapping[str, Any]) -> None:
        v = finite_number(data.get("heldout_miou"))
        if v is not None:
            self.heldout.append((self.x, v))

    def progress_text(self) -> str:
        """"student: step 40 of 150 — about 1 min 20 s left"."""
        if not self.stage:
            return "Starting: gathering patches from the correction ROIs…"
        text = f"{self.stage}: step {self.step} of {self.total}" if self.total else self.stage
        if self.message:
            text = f"{self.stage}: {self.message}"
        left = format_seconds(self.eta_s)
        return text + (f" — about {left} left" if left else "")


@dataclass(frozen=True)
class ResultRow:
    """One line of the before / after table."""

    name: str
    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before


def result_rows(result: Mapping[str, Any]) -> list[ResultRow]:
    """Before / after held-out mIoU and Dice of a round's result (``RoundResult.to_dict()``), and
    the replay sample's mIoU when the round measured one (its ``data["guard"]``)."""
    before = result.get("before") or {}
    after = result.get("after") or {}
    rows = [ResultRow(name, finite_number(before.get(key)), finite_number(after.get(key)))
            for key, name in RESULT_METRICS]
    replay = [c for c in comparisons_from_guard(_guard(result)) if c.part == "replay"]
    if replay:
        rows.append(ResultRow("Replay mIoU", replay[0].before, replay[0].after))
    return rows


def _guard(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    data = result.get("data")
    guard = data.get("guard") if isinstance(data, Mapping) else None
    return guard if isinstance(guard, Mapping) else None


def result_comparisons(result: Mapping[str, Any]) -> list[Comparison]:
    """The round's new version against its parent (held-out ROIs, replay sample), from its guard;
    without one, from the held-out before / after."""
    comps = comparisons_from_guard(_guard(result))
    if comps:
        return comps
    rows = result_rows(result)
    b, a = rows[0].before, rows[0].after
    return [] if b is None or a is None else [Comparison("heldout", "held-out ROIs", b, a, a < b)]


def format_score(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def format_change(v: float | None) -> str:
    return "" if v is None else f"{v:+.3f}"


def verdict(result: Mapping[str, Any]) -> str:
    """What the round made and how it compares with its parent. Which version is active is said
    in one place only (:func:`app.state.versions.active_sentence`), never here."""
    status = str(result.get("status") or "")
    version, parent = result.get("version"), result.get("parent")
    message = str(result.get("message") or "")
    if status not in ("done", "ok", "published") and not version:
        return message or f"The round ended: {status or 'no new version'}."
    if not version:
        return message or "The round made no new version."
    change = result_rows(result)[0].change
    if change is None:
        how = "Held-out mIoU could not be measured"
    elif change > 1e-4:
        how = f"Held-out mIoU improved by {change:.3f}"
    elif change < -1e-4:
        how = f"Held-out mIoU dropped by {-change:.3f}"
    else:
        how = "Held-out mIoU is unchanged"
    text = f"{how}: new version {version} (from {parent or 'nothing'})."
    comps = result_comparisons(result)
    worse = [c for c in comps if c.worse and c.part != "elsewhere"]
    moved = [c for c in comps if c.worse and c.part == "elsewhere"]
    if worse:
        where = " and on the ".join(c.label for c in worse)
        text += (f" It is worse than {parent or 'its parent'} on the {where}: keeping "
                 f"{parent or 'the old version'} is advised.")
    if moved:
        names = ", ".join(c.label for c in moved)
        text += (f" It changes the mask of {names}, which nobody corrected ("
                 + "; ".join(f"{c.what} {c.before:.0%} → {c.after:.0%} of the sampled tissue" for c in moved)
                 + f"): open {'that slide' if len(moved) == 1 else 'each'} and press Show on slide to look "
                   f"at it before keeping this version.")
    return text


@dataclass(frozen=True)
class ModelRow:
    """One line of the models table."""

    version: str
    parent: str
    created: str
    miou: str
    note: str
    active: bool


def heldout_miou(metrics: Mapping[str, Any]) -> float | None:
    """The held-out mIoU in a version's metrics (``after``/``miou`` of its round, or a flat key)."""
    for key in ("heldout_miou", "miou"):
        v = finite_number(metrics.get(key))
        if v is not None:
            return v
    after = metrics.get("after")
    if isinstance(after, Mapping):
        return finite_number(after.get("miou"))
    return None


def model_rows(versions: Iterable[Any], active: str | None) -> list[ModelRow]:
    """Table rows of registry versions (newest first), the active one marked. A version with no
    held-out score (an imported model) shows its card's validation mIoU, marked "(val)"."""
    rows = []
    for v in versions:
        metrics = v.metrics or {}
        miou = heldout_miou(metrics)
        text = format_score(miou)
        if miou is None and finite_number(metrics.get("val_miou")) is not None:
            text = f"{format_score(finite_number(metrics.get('val_miou')))} (val)"
        created = str(v.created or "").replace("T", " ")[:16]
        rows.append(ModelRow(v.version, v.parent or "—", created, text, v.note or "",
                             v.version == active))
    return rows[::-1]


def card_text(version: Any) -> str:
    """A version's model card as plain lines for the card view."""
    lines = [f"Version: {version.version}", f"Parent: {version.parent or '— (first version)'}",
             f"Created: {version.created}", f"File: {version.path}"]
    if version.note:
        lines.append(f"Note: {version.note}")
    lines += ["", "Metrics:"] + _pretty(version.metrics or {}, 1)
    lines += ["", "Card:"] + _pretty(version.card or {}, 1)
    return "\n".join(lines)


def _pretty(value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    if not isinstance(value, Mapping) or not value:
        return [pad + ("—" if value in ({}, None) else str(value))]
    out = []
    for k, v in value.items():
        if isinstance(v, Mapping) and v:
            out.append(f"{pad}{k}:")
            out += _pretty(v, depth + 1)
        elif isinstance(v, float):
            out.append(f"{pad}{k}: {v:.4g}")
        elif isinstance(v, (list, tuple)) and len(v) > 8:
            out.append(f"{pad}{k}: {', '.join(map(str, v[:8]))}, … ({len(v)} in all)")
        elif isinstance(v, (list, tuple)):
            out.append(f"{pad}{k}: {', '.join(map(str, v))}")
        else:
            out.append(f"{pad}{k}: {v}")
    return out


def review_viewport(region: Any, vp: Viewport, fill: float = 0.6,
                    finest: float = 1.0) -> Viewport:
    """The view that shows ``region`` (level-0 x, y, w, h) centred, filling about ``fill`` of the
    view's shorter fit, never zoomed past ``finest`` slide pixels per screen pixel."""
    x, y, w, h = float(region.x), float(region.y), float(region.w), float(region.h)
    ds = max(w / max(vp.width * fill, 1.0), h / max(vp.height * fill, 1.0), finest)
    return Viewport(x + w / 2, y + h / 2, ds, vp.width, vp.height, vp.dpr)


def region_text(index: int, region: Any, mpp: float | None) -> tuple[str, str]:
    """The list line ("3. uncertainty 0.61 at (12 400, 8 200)", centre in level-0 pixels) and its
    tooltip (the size: "256 × 256 µm", or pixels without a pixel size)."""
    what = "disagreement" if getattr(region, "kind", "") == "disagreement" else "uncertainty"
    if mpp:
        size = f"{region.w * mpp:.0f} × {region.h * mpp:.0f} µm"
    else:
        size = f"{region.w:.0f} × {region.h:.0f} px"
    cx, cy = (f"{v:,.0f}".replace(",", " ") for v in (region.x + region.w / 2, region.y + region.h / 2))
    value = float(getattr(region, "uncertainty", region.score))  # the score is the rank's worth
    return (f"{index}. {what} {value:.2f} at ({cx}, {cy})",
            f"{size} centred at ({cx}, {cy}) in slide pixels; {what} {value:.3f}")


class TextTail:
    """The last ``limit`` characters of a stream of text (a subprocess's stderr)."""

    def __init__(self, limit: int = 4000) -> None:
        self.limit = limit
        self._text = ""

    def add(self, text: str) -> None:
        self._text = (self._text + text)[-self.limit:]

    @property
    def text(self) -> str:
        return self._text

    def last_lines(self, n: int = 12) -> str:
        return "\n".join(self._text.strip().splitlines()[-n:])


@dataclass(frozen=True)
class RoundEnd:
    """How a round's process ended: ``status`` done / cancelled / failed, its result (a
    ``RoundResult.to_dict()``) when it sent one, a one-sentence ``message`` on failure and the tail
    of its stderr (shown under "Details")."""

    status: str
    exit_code: int | None
    result: Mapping[str, Any] | None = None
    message: str = ""
    stderr_tail: str = ""


def round_end(exit_code: int | None, crashed: bool, cancelled: bool,
              result: Mapping[str, Any] | None, error: str | None, stderr_tail: str) -> RoundEnd:
    """Judge a finished round process: cancelled by the user, failed (an ``error`` event, a crash,
    a non-zero exit, or no result), or done with its result."""
    if cancelled:
        return RoundEnd("cancelled", exit_code, None, "Cancelled: the model registry is unchanged.",
                        stderr_tail)
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
    if result is not None and str(result.get("status")) == "cancelled":  # stopped from outside
        return RoundEnd("cancelled", exit_code, result, str(result.get("message") or
                        "Cancelled: the model registry is unchanged."), stderr_tail)
    if error:
        return RoundEnd("failed", exit_code, result, error, stderr_tail)
    if crashed:
        return RoundEnd("failed", exit_code, result, "The fine-tuning process crashed"
                        + (f": {last}" if last else "."), stderr_tail)
    if exit_code:
        return RoundEnd("failed", exit_code, result, f"The fine-tuning process failed (exit code "
                        f"{exit_code})" + (f": {last}" if last else "."), stderr_tail)
    if result is None:
        return RoundEnd("failed", exit_code, None, "The fine-tuning process ended without a result"
                        + (f": {last}" if last else "."), stderr_tail)
    if str(result.get("status", "done")) in ("failed", "error", "nothing-to-learn"):
        return RoundEnd("failed", exit_code, result,
                        str(result.get("message") or "The round failed."), stderr_tail)
    return RoundEnd("done", exit_code, result, "", stderr_tail)
