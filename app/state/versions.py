"""Model versions in words, Qt-free: the one sentence about which version is active, and whether a
version is worse than the one it was fine-tuned from (so that making it active asks first).

A round measures its new version and the parent on the held-out ROIs and, when a replay sample of
the base training data is available, on that sample too. The round's result carries this as
``data["guard"]`` (``{"heldout": {"before", "after", "ok"}, "replay": {…} or None, …}``); the registry
keeps it in the version's ``metrics`` (``heldout_miou`` / ``heldout_miou_parent`` / ``heldout_ok``,
``replay_miou`` / ``replay_miou_parent`` / ``replay_ok``; versions registered before the ``_ok`` keys
were kept have none, and for them a lower score is worse).

It also predicts a few tissue patches of each slide nobody corrected in the round, with both
versions (``guard["elsewhere"]``: per slide, the share of the sampled tissue each class is called
before and after, the share of pixels whose class changed, and ``ok``: within the round's limits;
the registry keeps ``metrics["elsewhere"]``). A slide beyond the limits is not known to be worse,
only unchecked: making the version active asks first, like a worse one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api import CocoPathError

#: The measures compared, in order: (key, how the question names it).
PARTS = (("heldout", "held-out ROIs"), ("replay", "replay sample"))


def finite_number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Comparison:
    """The parent's and the new version's mIoU on one measure; ``worse`` as the round judged it
    (its guard's ``ok``, which allows the replay sample a small tolerance) or, with no judgement
    recorded, whenever the new one is lower."""

    part: str  # "heldout" | "replay" | "elsewhere" (a slide nobody corrected: ``label`` is its name)
    label: str
    before: float  # mIoU; for "elsewhere", the share of the sampled tissue called ``what``
    after: float
    worse: bool  # for "elsewhere": beyond the round's limits (its share moved, many pixels changed, or
    # tumour appeared on it or vanished)
    changed: float | None = None  # "elsewhere": the share of the sampled tissue's pixels whose class changed
    what: str = ""  # "elsewhere": the classes counted in before / after ("tumour")

    def line(self, old: str, new: str) -> str:
        """One line of the question before it becomes active: both figures, parent → new."""
        if self.part == "elsewhere":
            return (f"• {self.label}, which nobody corrected: {self.what} on {self.before:.1%} of the sampled "
                    f"tissue ({old}) → {self.after:.1%} ({new}); {self.changed or 0.0:.0%} of its pixels "
                    f"changed class{', look at it first' if self.worse else ''}")
        mark = "worse" if self.worse else "not worse"
        return f"• mIoU on the {self.label}: {self.before:.3f} ({old}) → {self.after:.3f} ({new}), {mark}"


def comparisons_from_guard(guard: Mapping[str, Any] | None) -> list[Comparison]:
    """The held-out and replay comparisons of a round's ``data["guard"]`` (those it measured)."""
    out = []
    for key, label in PARTS:
        part = (guard or {}).get(key)
        if not isinstance(part, Mapping):
            continue
        c = _scored(key, label, part.get("before"), part.get("after"), part.get("ok"))
        if c is not None:
            out.append(c)
    ew = (guard or {}).get("elsewhere")
    for row in (ew.get("slides") or []) if isinstance(ew, Mapping) else []:
        c = _drift(row.get("name"), row) if isinstance(row, Mapping) else None
        if c is not None:
            out.append(c)
    return out


def _drift(name: Any, row: Mapping[str, Any]) -> Comparison | None:
    """A slide nobody corrected, as a comparison: the foreground classes' share before and after;
    beyond the round's limits when its ``ok`` is False."""
    before, after = row.get("before"), row.get("after")
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return None
    b = [finite_number(v) for v in before.values()]
    a = [finite_number(after.get(k)) for k in before]
    ch = finite_number(row.get("changed"))
    if not b or None in b or None in a or ch is None:
        return None
    return Comparison("elsewhere", str(name), sum(b), sum(a), row.get("ok") is False, ch,
                      " or ".join(map(str, before)))


def _scored(key: str, label: str, before: Any, after: Any, ok: Any) -> Comparison | None:
    """One measured comparison; worse as the round judged it (``ok``), or, with no judgement
    recorded, whenever the new score is lower. None when either score is missing."""
    b, a = finite_number(before), finite_number(after)
    if b is None or a is None:
        return None
    return Comparison(key, label, b, a, (ok is False) if isinstance(ok, bool) else a < b)


def comparisons_from_metrics(metrics: Mapping[str, Any] | None) -> list[Comparison]:
    """The same comparisons from a registry version's ``metrics``: judged as the round judged them
    where it recorded its ``ok`` (``heldout_ok`` / ``replay_ok``), else a lower score is worse."""
    m = metrics or {}
    out = []
    for key, label in PARTS:
        c = _scored(key, label, m.get(f"{key}_miou_parent"), m.get(f"{key}_miou"), m.get(f"{key}_ok"))
        if c is not None:
            out.append(c)
    ew = m.get("elsewhere")
    for name, row in (ew.items() if isinstance(ew, Mapping) else []):
        c = _drift(name, row) if isinstance(row, Mapping) else None
        if c is not None:
            out.append(c)
    return out


def is_worse(comparisons: Sequence[Comparison]) -> bool:
    return any(c.worse for c in comparisons)


def worse_question(version: str, parent: str | None, comparisons: Sequence[Comparison]) -> str:
    """The confirmation asked before a worse version becomes active: both figures, parent → new."""
    old = parent or "the version it came from"
    scored = [c for c in comparisons if c.part != "elsewhere"]
    moved = [c for c in comparisons if c.part == "elsewhere"]
    worse = any(c.worse for c in scored)
    lines = [f"{version} is worse than {old}:" if worse else f"{version} is not worse than {old} on what "
             f"the round measured:"]
    lines += [c.line(old, version) for c in scored]
    if any(c.worse for c in moved):
        lines += ["", f"It changes the masks of slides nobody corrected in the round; it may be right there "
                      f"or not, and nothing the round measured can tell:"]
        lines += [c.line(old, version) for c in moved if c.worse]
    lines.append("")
    lines.append(f"To look first, keep {old} and press Show on slide (Training or Models panel): it "
                 f"shows {version}'s mask without making it active.")
    lines.append(f"Make {version} the active model anyway? Its masks may be worse than {old}'s.")
    return "\n".join(lines)


def active_sentence(active: str | None, parent: str | None = None, shown: str | None = None) -> str:
    """The one sentence, shown wherever the active version is named, about which version predicts
    and which one the next round starts from. ``shown``: the name of a model the Model panel holds
    instead (the user chose another file there), or None when it holds the active version."""
    if active is None:
        return ("No model version in this project yet: the first round starts from the Model "
                "panel's model and registers it.")
    origin = f" (fine-tuned from {parent})" if parent else ""
    if shown:
        return (f"Active version: {active}{origin}; the next round starts from it. The Model panel "
                f"shows another model ({shown}).")
    return f"Active version: {active}{origin}; it predicts, and the next round starts from it."


def checkpoint_of(version: Any) -> Path:
    """The .safetensors file of a registry version (its ``path``, or the one file in its folder)."""
    p = Path(version.path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        named = [f for f in files if f.stem in ("model", "student")]
        if named or files:
            return (named or files)[0]
        raise CocoPathError(f"model version {version.version}: no .safetensors file in {p}")
    return p
