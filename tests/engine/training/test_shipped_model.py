"""The default student and teacher under resources/models: valid cards, and the accuracy they claim.

The test split (rebuilt from the card's own case lists, no split file) is evaluated afresh: the fp16
weights must reproduce the card's figures per source folder — the adenocarcinoma and metastasis
mIoU and the share of pixels called tumour on the tiles without tumour — so weights, card and split
belong together. The figures themselves (and whether they meet the targets) are the benchmark's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.finetune.registry import default_model_path, default_teacher_path
from engine.inference.benign import benign_slide_calls
from engine.inference.spec import load_spec
from engine.training.checkpoints import load_meta, load_model
from engine.training.mixture import evaluate_by_source
from engine.training.runs import data_from_card
from engine.training.ship import STUDENT_NAME, TEACHER_LIMIT_BYTES, TEACHER_NAME

MODELS = Path(__file__).resolve().parents[3] / "resources" / "models"
STUDENT = MODELS / f"{STUDENT_NAME}.safetensors"
TEACHER = MODELS / f"{TEACHER_NAME}.safetensors"


def test_the_default_models_have_usable_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COCOPATH_DEFAULT_MODEL", raising=False)
    monkeypatch.delenv("COCOPATH_DEFAULT_TEACHER", raising=False)
    assert default_model_path() == STUDENT and default_teacher_path() == TEACHER
    for path in (STUDENT, TEACHER):
        spec = load_spec(path)
        assert spec.classes == ("background", "tumour")
        assert spec.mpp is not None and 0.2 < spec.mpp < 5
    assert STUDENT.stat().st_size < 20 * 2**20 and TEACHER.stat().st_size <= TEACHER_LIMIT_BYTES
    meta = load_meta(STUDENT)
    assert "ebhi-normal" in meta["data"]["negatives"] and set(meta["scale_tolerance"]) >= {"0.5", "1", "2"}
    assert not set(meta["data"]["test_cases"]) & set(meta["data"]["train_cases"])
    card = (MODELS / "MODEL_CARD.md").read_text()
    assert "CC BY 4.0" in card and "--ship resources/models" in card and "ebhi-high-grade-in" in card


@pytest.mark.slow
def test_the_default_student_reproduces_its_test_figures() -> None:
    model, meta = load_model(STUDENT)
    data = data_from_card(meta)
    assert len(data.test) > 100
    res = evaluate_by_source(model.float(), data.test, list(meta["classes"]))
    card = meta["metrics"]["test"]
    assert res["miou"] == pytest.approx(card["miou"], abs=0.005)
    assert res["negatives_tumour_share"] == pytest.approx(card["negatives_tumour_share"], abs=0.005)
    for name, row in card["per_source"].items():
        for key in ("miou", "tumour_share"):
            if key in row:
                assert res["per_source"][name][key] == pytest.approx(row[key], abs=0.01), (name, key)


def test_the_default_student_leaves_the_benign_slide_alone() -> None:
    """On cmu-1-small-region (benign skin, no carcinoma) the default student calls under 1 % of the
    tissue tumour, measured as the app runs it (whole-slide inference at the card's µm/px): the
    figure the ship gate compares a new student's against."""
    model, meta = load_model(STUDENT)
    calls = benign_slide_calls(model, meta)
    assert set(calls) == {"cmu-1-small-region.svs"}
    assert 0.0 <= calls["cmu-1-small-region.svs"] < 0.01
