"""The default student under resources/models: a valid card, and the accuracy its card claims.

The test split of ebhi-adenocarcinoma (split by case, as in the card) is evaluated afresh: the
fp16 weights must reproduce the card's test mIoU, so weights, card and split belong together.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.inference.spec import load_spec
from engine.shared_data import data_path
from engine.training.checkpoints import load_model
from engine.training.evaluate import evaluate
from engine.training.datasets import find_pairs
from engine.training.loader import SegDataset
from engine.training.ship import STUDENT_NAME

MODELS = Path(__file__).resolve().parents[3] / "resources" / "models"
STUDENT = MODELS / f"{STUDENT_NAME}.safetensors"


def test_the_default_student_has_a_usable_card() -> None:
    spec = load_spec(STUDENT)
    assert spec.classes == ("background", "tumour")
    assert spec.mpp is not None and 0.2 < spec.mpp < 5
    assert STUDENT.stat().st_size < 20 * 2**20  # fp16, small
    card = (MODELS / "MODEL_CARD.md").read_text()
    assert "CC BY 4.0" in card and "--ship resources/models" in card


def test_the_default_student_reproduces_its_test_miou() -> None:
    model, meta = load_model(STUDENT)
    test_cases = set(meta["data"]["test_cases"])
    assert test_cases and not test_cases & set(meta["data"]["train_cases"])
    regex = re.compile(meta["data"]["group_regex"])
    pairs = [p for p in find_pairs([data_path("seg", "ebhi-adenocarcinoma")])
             if regex.match(p.stem).group(1) in test_cases]  # type: ignore[union-attr]
    assert len(pairs) > 50
    result = evaluate(model.float(), SegDataset(pairs), list(meta["classes"]))
    assert result["miou"] == pytest.approx(meta["metrics"]["test"]["miou"], abs=0.005)
    assert result["miou"] > 0.6
