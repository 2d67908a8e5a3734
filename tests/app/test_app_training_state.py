"""The training docks' Qt-free state: curves from a round's events, how a round ended, the result
table, the models table, and where "Review next" takes the view."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from app.state.training import (RoundCurves, TextTail, card_text, format_seconds, model_rows,
                                region_text, result_comparisons, result_rows, review_viewport,
                                round_end, verdict)
from app.state.versions import active_sentence, comparisons_from_metrics, is_worse, worse_question
from app.state.viewport import Viewport


def test_curves_follow_progress_and_eval_events():
    c = RoundCurves()
    assert c.progress_text().startswith("Starting")
    for step in range(1, 4):
        c.add_progress({"stage": "student", "step": step, "total": 10,
                        "metrics": {"ce": 1.0 / step, "coco": 0.5, "bad": "nan?"}, "eta_s": 70 - step})
    c.add_eval({"step": 3, "heldout_miou": 0.61})
    c.add_eval({"step": 3})  # no score: ignored
    assert set(c.losses) == {"ce", "coco"}
    assert c.losses["ce"] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert c.heldout == [(3, 0.61)]
    assert c.progress_text() == "student: step 3 of 10 — about 1 min 07 s left"


def test_a_second_stage_labels_every_curve_with_its_stage_and_continues_the_axis():
    c = RoundCurves()
    c.add_progress({"stage": "data", "step": 1, "total": 1, "message": "gathering patches"})
    c.add_progress({"stage": "teacher", "step": 1, "total": 2, "metrics": {"loss": 2.0}})
    c.add_progress({"stage": "teacher", "step": 2, "total": 2, "metrics": {"loss": 1.5}})
    c.add_progress({"stage": "student", "step": 1, "total": 5, "metrics": {"loss": 0.9}})
    assert c.losses == {"teacher: loss": [(2, 2.0), (3, 1.5)], "student: loss": [(4, 0.9)]}
    assert c.progress_text() == "student: step 1 of 5"
    c.add_progress({"stage": "publish", "step": 0, "total": 1, "message": "publishing the new version"})
    assert c.progress_text() == "publish: publishing the new version"
    assert set(c.losses) == {"teacher: loss", "student: loss"}  # no metrics, no new curve


@pytest.mark.parametrize("seconds, text", [(None, ""), (-1, ""), (float("inf"), ""), (4.4, "4 s"),
                                           (65, "1 min 05 s"), (3720, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


RESULT = {"status": "done", "version": "v0002", "parent": "v0001",
          "before": {"miou": 0.5, "dice": 0.6}, "after": {"miou": 0.625, "dice": 0.7},
          "activated": True, "seconds": 42.0, "message": ""}


def test_result_rows_and_verdict():
    rows = result_rows(RESULT)
    assert [r.name for r in rows] == ["Held-out mIoU", "Held-out Dice"]
    assert rows[0].before == 0.5 and rows[0].after == 0.625 and rows[0].change == pytest.approx(0.125)
    text = verdict(RESULT)
    assert text == "Held-out mIoU improved by 0.125: new version v0002 (from v0001)."
    assert "active" not in verdict({**RESULT, "activated": False})  # said in one place only
    worse = {**RESULT, "after": {"miou": 0.4, "dice": 0.5}, "activated": False}
    assert verdict(worse) == ("Held-out mIoU dropped by 0.100: new version v0002 (from v0001). It "
                              "is worse than v0001 on the held-out ROIs: keeping v0001 is advised.")
    assert result_rows({})[0].change is None
    nothing = {"status": "done", "version": None, "parent": "v0001",
               "message": "nothing new: no step of the round beat v0001 on the held-out ROIs"}
    assert verdict(nothing) == nothing["message"]


GUARD = {"heldout": {"before": 0.5, "after": 0.625, "ok": True},
         "replay": {"before": 0.7, "after": 0.64, "tolerance": 0.01, "ok": False},
         "activated": False, "reason": "worse on the replay sample of its training data"}


def test_the_replay_sample_gets_a_row_and_a_worse_one_is_said():
    result = {**RESULT, "activated": False, "data": {"guard": GUARD}}
    rows = result_rows(result)
    assert [r.name for r in rows] == ["Held-out mIoU", "Held-out Dice", "Replay mIoU"]
    assert (rows[2].before, rows[2].after) == (0.7, 0.64)
    assert verdict(result).endswith("It is worse than v0001 on the replay sample: keeping v0001 "
                                    "is advised.")
    comps = result_comparisons(result)
    assert [(c.part, c.worse) for c in comps] == [("heldout", False), ("replay", True)]
    within = {**GUARD, "replay": {**GUARD["replay"], "after": 0.695, "ok": True}}
    assert not is_worse(result_comparisons({**RESULT, "data": {"guard": within}}))


def test_registry_metrics_compare_a_version_with_its_parent():
    assert comparisons_from_metrics({"heldout_miou": 0.6}) == []  # no parent figure: unknown
    comps = comparisons_from_metrics({"heldout_miou": 0.33, "heldout_miou_parent": 0.404,
                                      "replay_miou": 0.61, "replay_miou_parent": 0.6})
    assert [(c.part, c.before, c.after, c.worse) for c in comps] == [
        ("heldout", 0.404, 0.33, True), ("replay", 0.6, 0.61, False)]
    question = worse_question("v0002", "v0001", comps)
    assert question.splitlines()[:3] == [
        "v0002 is worse than v0001:",
        "• mIoU on the held-out ROIs: 0.404 (v0001) → 0.330 (v0002), worse",
        "• mIoU on the replay sample: 0.600 (v0001) → 0.610 (v0002), not worse"]
    assert "anyway" in question.splitlines()[-1]


def test_registry_metrics_judge_as_the_round_judged():
    """A replay loss inside the round's tolerance was accepted by the round: Accept's question must
    not call it worse (it did, reading the bare scores, 0.647 → 0.643)."""
    within = {"heldout_miou": 0.5, "heldout_miou_parent": 0.4, "heldout_ok": True,
              "replay_miou": 0.643, "replay_miou_parent": 0.647, "replay_ok": True}
    comps = comparisons_from_metrics(within)
    assert [(c.part, c.worse) for c in comps] == [("heldout", False), ("replay", False)]
    assert not is_worse(comps)
    assert worse_question("v0002", "v0001", comps).splitlines()[2] == (
        "• mIoU on the replay sample: 0.647 (v0001) → 0.643 (v0002), not worse")
    # the round's verdict wins both ways; a version registered without it is judged by the scores
    assert is_worse(comparisons_from_metrics({**within, "replay_ok": False}))
    legacy = {k: v for k, v in within.items() if not k.endswith("_ok")}
    assert [c.worse for c in comparisons_from_metrics(legacy)] == [False, True]


ELSEWHERE = {"limits": {"share": 0.1, "changed": 0.35}, "ok": False, "slides": [
    {"id": 2, "name": "scc.svs", "before": {"tumour": 0.646}, "after": {"tumour": 0.009}, "changed": 0.64,
     "ok": False},
    {"id": 3, "name": "node.tif", "before": {"tumour": 0.1}, "after": {"tumour": 0.12}, "changed": 0.03,
     "ok": True}]}


def test_a_slide_nobody_corrected_that_changed_is_said_and_asks_before_use():
    guard = {"heldout": {"before": 0.5, "after": 0.625, "ok": True}, "replay": None, "elsewhere": ELSEWHERE}
    result = {**RESULT, "activated": False, "data": {"guard": guard}}
    comps = result_comparisons(result)
    assert [(c.part, c.label, c.worse) for c in comps] == [
        ("heldout", "held-out ROIs", False), ("elsewhere", "scc.svs", True), ("elsewhere", "node.tif", False)]
    assert is_worse(comps)  # making it active asks first
    assert [r.name for r in result_rows(result)] == ["Held-out mIoU", "Held-out Dice"]
    assert verdict(result).endswith("It changes the mask of scc.svs, which nobody corrected (tumour 65% → 1% "
                                    "of the sampled tissue): open that slide and press Show on slide to look "
                                    "at it before keeping this version.")
    question = worse_question("v0002", "v0001", comps).splitlines()
    assert question[0] == "v0002 is not worse than v0001 on what the round measured:"
    assert ("• scc.svs, which nobody corrected: tumour on 64.6% of the sampled tissue (v0001) → 0.9% (v0002); "
            "64% of its pixels changed class, look at it first") in question
    assert not any("node.tif" in line for line in question)  # within the limit: not listed
    # the registry's copy (a version chosen later in the Models panel) asks the same
    metrics = {"heldout_miou": 0.625, "heldout_miou_parent": 0.5,
               "elsewhere": {r["name"]: {k: r[k] for k in ("before", "after", "changed", "ok")}
                             for r in ELSEWHERE["slides"]}}
    again = comparisons_from_metrics(metrics)
    assert [(c.part, c.label, c.worse) for c in again] == [
        ("heldout", "held-out ROIs", False), ("elsewhere", "scc.svs", True), ("elsewhere", "node.tif", False)]
    calm = {**ELSEWHERE, "ok": True, "slides": ELSEWHERE["slides"][1:]}
    assert not is_worse(result_comparisons({**RESULT, "data": {"guard": {**guard, "elsewhere": calm}}}))
    assert comparisons_from_metrics({**metrics, "elsewhere": {"x": {"before": "?", "after": {}}}})[1:] == []


def test_one_sentence_says_which_version_is_active():
    assert active_sentence("v0002", "v0001") == ("Active version: v0002 (fine-tuned from v0001); it "
                                                 "predicts, and the next round starts from it.")
    assert active_sentence("v0001") == ("Active version: v0001; it predicts, and the next round "
                                        "starts from it.")
    assert "No model version" in active_sentence(None)
    assert "Model panel shows another model (mobile-unet)" in active_sentence("v0001", None, "mobile-unet")


def test_round_end_judges_each_way_a_process_can_end():
    assert round_end(0, False, False, RESULT, None, "").status == "done"
    assert round_end(None, True, True, None, None, "").status == "cancelled"
    err = round_end(1, False, False, None, "No correction ROIs in this project.", "Traceback…\nX")
    assert (err.status, err.message) == ("failed", "No correction ROIs in this project.")
    code = round_end(3, False, False, None, None, "warming up\nRuntimeError: boom\n")
    assert code.status == "failed" and "exit code 3" in code.message and "RuntimeError: boom" in code.message
    crash = round_end(None, True, False, None, None, "")
    assert crash.status == "failed" and "crashed" in crash.message
    silent = round_end(0, False, False, None, None, "")
    assert silent.status == "failed" and "without a result" in silent.message
    inner = round_end(0, False, False, {"status": "failed", "message": "out of memory"}, None, "")
    assert (inner.status, inner.message) == ("failed", "out of memory")
    outside = round_end(130, False, False, {"status": "cancelled", "message": "stopped"}, None, "")
    assert (outside.status, outside.message) == ("cancelled", "stopped")
    nothing = round_end(0, False, False, {"status": "nothing-to-learn", "message": "no ROIs"}, None, "")
    assert (nothing.status, nothing.message) == ("failed", "no ROIs")


def test_text_tail_keeps_the_end():
    t = TextTail(10)
    t.add("abcdefgh")
    t.add("ijklmn")
    assert t.text == "efghijklmn"
    t2 = TextTail()
    t2.add("\n".join(str(i) for i in range(30)))
    assert t2.last_lines(3) == "27\n28\n29"


@dataclass(frozen=True)
class Version:
    version: str
    path: Path
    parent: str | None
    created: str
    metrics: dict
    card: dict
    note: str


def test_model_rows_newest_first_with_the_active_marked():
    vs = [Version("v0001", Path("/m/v0001/model.safetensors"), None, "2026-01-02T03:04:05+00:00",
                  {"val_miou": 0.7}, {}, "imported"),
          Version("v0002", Path("/m/v0002/model.safetensors"), "v0001", "2026-01-03T00:00:00+00:00",
                  {"before": {"miou": 0.5}, "after": {"miou": 0.6}}, {}, "round 1")]
    rows = model_rows(vs, "v0001")
    assert [r.version for r in rows] == ["v0002", "v0001"]
    assert [r.active for r in rows] == [False, True]
    assert rows[0].miou == "0.600" and rows[1].miou == "0.700 (val)"
    assert rows[1].parent == "—" and rows[1].created == "2026-01-02 03:04"
    text = card_text(Version("v0002", Path("/m"), "v0001", "t", {"after": {"miou": 0.6}},
                             {"classes": ["background", "tumour"], "input": {"mpp": 1.0}}, ""))
    assert "Parent: v0001" in text and "miou: 0.6" in text and "classes: background, tumour" in text


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    w: int
    h: int
    score: float
    kind: str = "entropy"


def test_review_viewport_centres_and_fits_the_region():
    vp = Viewport(0, 0, 8.0, 1000, 600)
    out = review_viewport(Region(1000, 2000, 512, 512, 0.9), vp)
    assert (out.cx, out.cy) == (1256, 2256)
    assert out.downsample == pytest.approx(512 / (600 * 0.6))
    x0, y0, x1, y1 = out.visible_rect()
    assert x0 <= 1000 and y0 <= 2000 and x1 >= 1512 and y1 >= 2512
    tiny = review_viewport(Region(0, 0, 40, 40, 0.5), vp)
    assert tiny.downsample == 1.0  # never past the slide's own pixels
    assert region_text(1, Region(1000, 0, 512, 512, 0.613), 0.5) == \
        ("1. uncertainty 0.61 at (1 256, 256)",
         "256 × 256 µm centred at (1 256, 256) in slide pixels; uncertainty 0.613")
    text, tip = region_text(2, Region(0, 0, 512, 512, 0.2, "disagreement"), None)
    assert text == "2. disagreement 0.20 at (256, 256)" and tip.startswith("512 × 512 px")
