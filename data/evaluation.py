"""Segmentation scores exactly as the official Cityscapes evaluator computes them.

mcordts/cityscapesScripts ``evaluation/evalPixelLevelSemanticLabeling.py``
accumulates one confusion matrix over the whole split (ground-truth rows,
predicted columns, over all label ids) and scores class c by

    IoU_c = TP / (TP + FP + FN),  TP = C[c, c],
    FN = every pixel of ground truth c not predicted c (predictions of classes
         that are ignored in evaluation count here too),
    FP = pixels predicted c whose ground truth is another *evaluated* class,

NaN when the denominator is 0; a mean is the average over the classes that
are not NaN. Here the matrix is kept in train ids: K rows (ignored ground
truth dropped) and K+1 columns, the last one collecting predictions outside
the label space, which is the same arithmetic. Means are reported over the
label space's subsets (19/16/13 classes for Cityscapes).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fcnwild.base.errors import DatasetError
from fcnwild.data.images import write_png
from fcnwild.data.labels import IGNORE, LabelSpace

# cv2.calcHist counts in float32, exact up to 2**24 per bin; larger maps are counted in row blocks.
_EXACT_FLOAT32_COUNT = 1 << 24


def joint_histogram(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """int64[256, 256]: how many pixels have ground truth value a and prediction value b.

    Both maps are uint8 and of one shape. OpenCV's 2-D histogram is the same
    count as ``np.bincount(gt * 256 + pred)`` at a third of the cost (and
    without holding the GIL), which is what keeps evaluation I/O-bound.
    """
    rows_per_block = max(1, _EXACT_FLOAT32_COUNT // max(1, gt.shape[1]) - 1)
    total = np.zeros((256, 256), dtype=np.int64)
    for start in range(0, gt.shape[0], rows_per_block):
        block = slice(start, start + rows_per_block)
        hist = cv2.calcHist([np.ascontiguousarray(gt[block]), np.ascontiguousarray(pred[block])],
                            [0, 1], None, [256, 256], [0, 256, 0, 256])
        total += hist.astype(np.int64)
    return total


def as_label_map(array: np.ndarray) -> np.ndarray:
    """Predictions as uint8; values past 254 all land in 255, which no label space uses."""
    if array.dtype == np.uint8:
        return array
    return np.clip(array, 0, IGNORE).astype(np.uint8)


class ConfusionMatrix:
    """K x (K+1) pixel counts: rows ground-truth train ids, columns predicted train ids;
    column K counts predictions outside the label space. Ignored ground truth is not counted."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray, pred_lut: np.ndarray | None = None) -> None:
        """Count one image. ``gt`` in train ids; ``pred`` in train ids, or in on-disk ids with
        ``pred_lut`` (uint8[256], id -> train id) mapping them."""
        if gt.shape != pred.shape:
            raise DatasetError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        self.add_joint(joint_histogram(as_label_map(gt), as_label_map(pred)), pred_lut)

    def add_joint(self, joint: np.ndarray, pred_lut: np.ndarray | None = None) -> None:
        """Count a joint histogram of (ground-truth train id, prediction value)."""
        k = self.num_classes
        target = np.arange(256) if pred_lut is None else pred_lut.astype(np.int64)
        target = np.minimum(target, k)  # every value that is no class of the space: column K
        np.add.at(self.counts.T, target, joint[:k].T)

    def merge(self, other: ConfusionMatrix) -> None:
        self.counts += other.counts

    def iou(self) -> np.ndarray:
        tp = np.diag(self.counts[:, : self.num_classes]).astype(np.float64)
        fn = self.counts.sum(axis=1) - tp
        fp = self.counts[:, : self.num_classes].sum(axis=0) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts[:, : self.num_classes]) / total) if total else math.nan


def nan_mean(values: np.ndarray) -> float:
    """The official average: over the entries that are not NaN, summed in class order."""
    valid = [float(v) for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else math.nan


@dataclass
class EvaluationResult:
    label_space: LabelSpace
    confusion: ConfusionMatrix
    num_images: int
    title: str = ""
    skipped: tuple[str, ...] = ()      # why each left-out sample was left out (file: reason)
    iou: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.iou = self.confusion.iou()

    @property
    def mean_iou(self) -> dict[str, float]:
        """Mean IoU per reported subset, e.g. {"19": ..., "16": ..., "13": ...}."""
        return {name: nan_mean(self.iou[list(classes)]) for name, classes in self.label_space.means.items()}

    @property
    def pixel_accuracy(self) -> float:
        return self.confusion.pixel_accuracy()

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)
        return {
            "title": self.title,
            "label_space": self.label_space.name,
            "num_images": self.num_images,
            "classes": list(self.label_space.class_names),
            "iou": {n: num(v) for n, v in zip(self.label_space.class_names, self.iou)},
            "mean_iou": {k: num(v) for k, v in self.mean_iou.items()},
            "pixel_accuracy": num(self.pixel_accuracy),
            "confusion": self.confusion.counts.tolist(),
            "skipped": list(self.skipped),
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    def write_csv(self, path: str | Path) -> None:
        """One header row (classes in the paper's order, then the means) and one row of IoUs in [0, 1]."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        means = self.mean_iou
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([*self.label_space.class_names, *(f"mIoU{k}" for k in means), "pixel_accuracy"])
            writer.writerow([*(f"{v:.6f}" for v in self.iou), *(f"{v:.6f}" for v in means.values()),
                             f"{self.pixel_accuracy:.6f}"])

    def table(self) -> str:
        """The paper's table row: per-class IoU in percent, in its column order, then the means."""
        headers = [*self.label_space.short_names, *(f"mIoU{k}" for k in self.mean_iou), "pixacc"]
        values = [*self.iou, *self.mean_iou.values(), self.pixel_accuracy]
        widths = [max(len(h), 5) for h in headers]
        cells = ["n/a" if math.isnan(v) else f"{100 * v:.1f}" for v in values]
        lines = [self.title] if self.title else []
        lines.append(" ".join(h.rjust(w) for h, w in zip(headers, widths)))
        lines.append(" ".join(c.rjust(w) for c, w in zip(cells, widths)))
        return "\n".join(lines)


class PredictionWriter:
    """Saves predictions as label-id PNGs (``DIR/labelIds/NAME.png``, what the official
    evaluator reads) and colour PNGs in the published palette (``DIR/color/NAME.png``)."""

    def __init__(self, out_dir: str | Path, space: LabelSpace) -> None:
        self.out_dir = Path(out_dir)
        self.export_lut = space.export_lut()
        self.color_lut = space.color_lut()

    def write(self, name: str, train_ids: np.ndarray) -> None:
        train_ids = as_label_map(train_ids)
        write_png(self.out_dir / "labelIds" / f"{name}.png", cv2.LUT(train_ids, self.export_lut))
        write_png(self.out_dir / "color" / f"{name}.png", self.color_lut[train_ids], rgb=True)
