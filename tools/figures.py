"""The demo's figures (matplotlib, no display): a qualitative grid like the paper's Fig. 3,
training curves and per-class IoU bars."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fcnwild.data.labels import LabelSpace  # noqa: E402


def qualitative_grid(path: Path, images: Sequence[np.ndarray],
                     columns: Mapping[str, Sequence[np.ndarray]], ground_truth: Sequence[np.ndarray],
                     space: LabelSpace) -> None:
    """Rows: target images; columns: the image, each model's prediction, the ground truth."""
    colours = space.color_lut()
    titles = ["target image", *columns, "ground truth"]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(titles), figsize=(2.6 * len(titles), 1.45 * rows),
                             squeeze=False)
    for r in range(rows):
        panels = [images[r]] + [colours[predictions[r]] for predictions in columns.values()] + \
            [colours[ground_truth[r]]]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(path: Path, curves: Mapping[str, Mapping[str, Sequence[float]]],
                    titles: Mapping[str, str]) -> None:
    """Segmentation loss of every stage, domain-classifier accuracy and MIL loss."""
    panels = [("loss", "segmentation loss (source)"),
              ("dom_accuracy", "domain classifier accuracy"),
              ("mil_loss", "constrained MIL loss (target)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.4))
    for ax, (top, label) in zip(axes, panels):
        for stage, values in curves.items():
            series = np.asarray(values.get(top, ()), dtype=float)
            if series.size:
                window = max(1, series.size // 40)
                smooth = np.convolve(series, np.ones(window) / window, mode="valid")
                ax.plot(np.arange(smooth.size) + window, smooth, label=titles[stage])
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
        if top == "dom_accuracy":
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def iou_bars(path: Path, classes: Sequence[str], ious: Mapping[str, Sequence[float]],
             spread: Mapping[str, Sequence[float]] | None = None) -> None:
    """Grouped bars: per-class IoU (%) of each stage, with ``spread`` (e.g. the standard
    deviation over seeds) as error bars."""
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(classes)), 3.6))
    width = 0.8 / max(1, len(ious))
    x = np.arange(len(classes))
    for k, (stage, values) in enumerate(ious.items()):
        error = None if spread is None else np.nan_to_num(np.asarray(spread[stage]) * 100)
        ax.bar(x + (k - (len(ious) - 1) / 2) * width, np.nan_to_num(np.asarray(values) * 100),
               width, yerr=error, capsize=2, label=stage)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel("IoU (%)")
    ax.legend(fontsize=8, ncol=len(ious))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
