"""Segmentation metrics from one confusion matrix accumulated over a whole split (as in the paper):
mIoU = mean over classes of TP/(TP+FP+FN), background included; Dice = mean over classes of
2TP/(2TP+FP+FN); pixel accuracy = trace/total. A class absent from both labels and predictions is
left out of the means."""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: truth, cols: prediction

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        t = truth.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        ok = (t >= 0) & (t < self.k)
        self.matrix += np.bincount(self.k * t[ok] + p[ok], minlength=self.k * self.k).reshape(self.k, self.k)

    def summary(self, class_names: list[str] | None = None) -> dict[str, Any]:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        fp, fn = m.sum(0) - tp, m.sum(1) - tp
        present = (tp + fp + fn) > 0
        iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
        dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        names = class_names or [str(i) for i in range(self.k)]
        return {
            "miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "dice": float(np.nanmean(dice)) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / max(m.sum(), 1)),
            "per_class": {n: {"iou": None if np.isnan(i) else float(i), "dice": None if np.isnan(d) else float(d)}
                          for n, i, d in zip(names, iou, dice)},
            "pixels": int(m.sum()),
        }
