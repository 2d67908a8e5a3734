"""What a round does to the slides nobody corrected.

A round is checked on its held-out ROIs and on tiles of the model's base training data. Neither
shows a slide of the project that nobody corrected, and a round can change such a slide's mask
wholesale: measured on the real slides, three background ROIs on the benign epidermis of one skin
slide taught the student that squamous epithelium is not tumour, and its mask of a squamous
carcinoma on another slide went from 64.6 % to 0.9 % of the tissue, with every check passed.

So a round cuts a few tissue patches of each slide nobody corrected (:func:`engine.finetune.data.gather`),
predicts them with the parent and with the new version, and compares, on the tissue pixels of
each slide: the share each class is called, and the share of pixels whose class changed. A slide
where a class's share moved by more than :data:`SHARE_LIMIT`, more than :data:`CHANGE_LIMIT` of
the pixels changed class, or a class appeared on a slide that was clear of it (from under
:data:`CLEAR_SHARE` to :data:`MARKED_SHARE` or more) or vanished from one it marked, is named in the
guard, and the version is not made active on its own:
the change may be right (the same mistake, fixed everywhere) or wrong, and only the pathologist,
looking at that slide, can tell.

The limits come from four rounds on the two real slides (README, "The same two corrections, with
both slides in one project"): the versions that erased the carcinoma of the other slide or painted
its benign skin moved the tumour share of the sampled tissue by 16-56 points; the one whose other
slide looked the same whole-slide moved it by 0.2 points, yet changed the class of 23 % of the
sampled pixels (about 14 % whole-slide: the edges of the lobules). A share moves when a tissue type
is erased or painted; changed pixels also count edges, so their limit is looser. Four rounds on two
slides are a first setting, not a calibration.

The third rule came from ``cocopath-engine bench loop``: from the shipped student, which marks
nothing on either slide, three tumour boxes on the frozen section moved the benign skin's sampled
tissue from 0.1 % to 9.7 % tumour (10 % of its pixels changed), just inside both limits, and the
version was made active. Whole-slide it paints 18.9 % of the skin. A slide that showed no tumour
and now shows some is the change a pathologist notices first, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.finetune.data import Patch

#: Most a class's share of a slide's sampled tissue may move (either way) without the slide being named.
SHARE_LIMIT = 0.10
#: Most of a slide's sampled tissue pixels that may change class without the slide being named.
CHANGE_LIMIT = 0.35
#: A class called on less than this share of a slide's sampled tissue: the slide is clear of it.
CLEAR_SHARE = 0.01
#: A class called on this share or more: the slide is marked with it. A slide that goes from clear
#: to marked, or from marked to clear, is named however small the move.
MARKED_SHARE = 0.05


def drift(before: Sequence[np.ndarray], after: Sequence[np.ndarray], patches: Sequence[Patch],
          slides: Sequence[dict[str, Any]], classes: Sequence[str],
          merge: Sequence[int] | None = None) -> dict[str, Any] | None:
    """Per slide: the share of tissue pixels of each class before and after, and the share whose
    class changed. ``before`` / ``after``: class maps of ``patches`` by the parent and the new
    version; ``merge``: the new version's class ``i`` counts as the parent's ``merge[i]`` (a new
    output class counts as the class it stands for). None when there is nothing to compare."""
    if not patches or not slides:
        return None
    lut = None if merge is None else np.asarray(merge, dtype=np.int64)
    k = len(classes)
    counts = {s["id"]: {"before": np.zeros(k, np.int64), "after": np.zeros(k, np.int64), "changed": 0,
                        "pixels": 0, "patches": 0} for s in slides}
    for p, b, a in zip(patches, before, after, strict=True):
        c = counts.get(p.slide_id)
        if c is None:
            continue
        tissue = p.tissue if p.tissue is not None else np.ones(b.shape, bool)
        a = a if lut is None else lut[a]
        bt, at = b[tissue].astype(np.int64), a[tissue].astype(np.int64)
        c["before"] += np.bincount(bt, minlength=k)[:k]
        c["after"] += np.bincount(at, minlength=k)[:k]
        c["changed"] += int((bt != at).sum())
        c["pixels"] += int(tissue.sum())
        c["patches"] += 1
    rows = []
    for s in slides:
        c = counts[s["id"]]
        n = max(c["pixels"], 1)
        changed = c["changed"] / n
        shift = float(np.abs(c["after"] - c["before"]).max() / n)  # background's share included
        before = {classes[i]: float(c["before"][i] / n) for i in range(1, k)}
        after = {classes[i]: float(c["after"][i] / n) for i in range(1, k)}
        crossed = [name for name in before if _crossed(before[name], after[name])]
        rows.append({"id": s["id"], "name": s["name"], "patches": c["patches"], "pixels": c["pixels"],
                     "before": before, "after": after, "shift": shift, "changed": float(changed),
                     "crossed": crossed,
                     "ok": bool(shift <= SHARE_LIMIT and changed <= CHANGE_LIMIT and not crossed)})
    rows = [r for r in rows if r["pixels"]]
    if not rows:
        return None
    return {"slides": rows, "limits": {"share": SHARE_LIMIT, "changed": CHANGE_LIMIT, "clear": CLEAR_SHARE,
                                       "marked": MARKED_SHARE},
            "ok": all(r["ok"] for r in rows)}


def _crossed(before: float, after: float) -> bool:
    """A class appeared on a slide clear of it, or vanished from a slide it marked."""
    return (before < CLEAR_SHARE and after >= MARKED_SHARE) or (before >= MARKED_SHARE and after < CLEAR_SHARE)


def describe(row: dict[str, Any]) -> str:
    """One slide's change in words: "tcga-1.svs: tumour 64.6 % → 0.9 % of the sampled tissue, 64 %
    of its pixels changed"."""
    shares = "; ".join(f"{name} {row['before'][name]:.1%} → {row['after'].get(name, 0.0):.1%}"
                       for name in row["before"])
    news = [f"{name} {'appears where none was called' if row['after'][name] > row['before'][name] else 'vanishes'}"
            for name in row.get("crossed", ())]
    return (f"{row['name']}: {shares} of the sampled tissue{' (' + '; '.join(news) + ')' if news else ''}, "
            f"{row['changed']:.0%} of its pixels changed")


def summary(check: dict[str, Any], most: int = 3) -> str:
    """The slides nobody corrected in one clause, for the round's message."""
    rows = check["slides"]
    text = "; ".join(describe(r) for r in rows[:most])
    if len(rows) > most:
        text += f"; {len(rows) - most} more, at most {max(r['changed'] for r in rows[most:]):.0%} of their pixels changed"
    return f"slide{'s' if len(rows) != 1 else ''} nobody corrected: {text}"


def reason(check: dict[str, Any] | None) -> str:
    """The guard's sentence when a slide nobody corrected changed too much; "" otherwise."""
    if not check or check.get("ok", True):
        return ""
    moved = [r for r in check["slides"] if not r["ok"]]
    which = "a slide" if len(moved) == 1 else f"{len(moved)} slides"
    return (f"it changes the mask of {which} nobody corrected in this round, "
            + "; ".join(describe(r) for r in moved)
            + f"; look at {'it' if len(moved) == 1 else 'them'} before making it active")


__all__ = ["CHANGE_LIMIT", "CLEAR_SHARE", "MARKED_SHARE", "SHARE_LIMIT", "describe", "drift", "reason", "summary"]
