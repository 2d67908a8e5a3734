from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.models import create_model
from engine.training.evaluate import evaluate, predict_logits
from engine.training.metrics import ConfusionMatrix


def test_miou_comes_from_one_confusion_matrix_over_the_split() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))  # image 1
    cm.update(np.array([[0, 0], [0, 0]]), np.array([[0, 0], [0, 1]]))  # image 2: no tumour in truth
    s = cm.summary(["bg", "tumour"])
    # totals: TP_bg=5, TP_t=1, truth-t predicted bg=1, truth-bg predicted t=1
    assert s["per_class"]["bg"]["iou"] == pytest.approx(5 / 7)
    assert s["per_class"]["tumour"]["iou"] == pytest.approx(1 / 3)
    assert s["miou"] == pytest.approx((5 / 7 + 1 / 3) / 2)
    assert s["dice"] == pytest.approx((10 / 12 + 2 / 4) / 2)
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)


class Shift(nn.Module):
    """Predicts class 1 where the first channel is positive; checks the crop keeps alignment."""

    stride = 32
    classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return torch.cat([-x[:, :1], x[:, :1]], 1)


def test_any_size_is_padded_to_the_stride_and_cropped_back() -> None:
    x = torch.randn(1, 3, 50, 70)
    out = predict_logits(Shift(), x)
    assert out.shape == (1, 2, 50, 70)
    assert torch.equal(out.argmax(1)[0], (x[0, 0] > 0).long())
    model = create_model("mobile-unet-small").eval()
    assert predict_logits(model, torch.randn(1, 3, 45, 33)).shape == (1, 2, 45, 33)


def test_evaluate_on_a_dataset() -> None:
    class DS:
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            x = torch.randn(3, 40, 40, generator=g)
            return x, (x[0] > 0).long()

    res = evaluate(Shift(), DS(), ["bg", "t"])  # type: ignore[arg-type]
    assert res["miou"] == pytest.approx(1.0) and res["images"] == 2 and res["pixels"] == 3200
