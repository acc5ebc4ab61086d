"""Per-class size statistics of a labelled source set: the bounds of the constrained MIL loss.

For class c, over the source images that contain c, take the fraction of the
image labelled c. The denominator is the image's *labelled* pixels: ignore
(255) pixels are left out, so an image's fractions over the classes sum to 1
and an unlabelled border does not shrink every class. Then

    alpha_c = 10th percentile,  delta_c = mean,  gamma_c = 90th percentile

(``numpy.percentile``, default linear interpolation). A class no image
contains gets 0, 0, 0 and an image count of 0.

The mean of a skewed distribution can fall outside [alpha, gamma]; since the
loss needs alpha <= delta <= gamma, delta is then clipped to the nearer bound
and the class is listed under ``delta_clipped`` in the file (with a warning).
"""
from __future__ import annotations

import json
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import SegmentationDataset, SkippedSamples

FORMAT = "fcnwild-class-stats"
VERSION = 1
DEFINITION = ("fraction of labelled (non-ignore) pixels of class c in each source image containing c; "
              "alpha = 10th percentile, delta = mean, gamma = 90th percentile (numpy linear)")


@dataclass(frozen=True)
class ClassStats:
    class_names: tuple[str, ...]
    label_space: str
    alpha: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    image_counts: np.ndarray
    num_images: int
    delta_clipped: tuple[str, ...] = field(default=())
    skipped: tuple[str, ...] = field(default=())     # left-out samples: file and reason

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "definition": DEFINITION,
            "label_space": self.label_space, "num_classes": self.num_classes,
            "class_names": list(self.class_names), "num_images": self.num_images,
            "alpha": self.alpha.tolist(), "delta": self.delta.tolist(), "gamma": self.gamma.tolist(),
            "image_counts": self.image_counts.tolist(), "delta_clipped": list(self.delta_clipped),
            "skipped": list(self.skipped),
        }

    def table(self) -> str:
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class'.ljust(width)}  images   alpha   delta   gamma"]
        for k, name in enumerate(self.class_names):
            lines.append(f"{name.ljust(width)}  {self.image_counts[k]:6d}  {self.alpha[k]:.4f}  "
                         f"{self.delta[k]:.4f}  {self.gamma[k]:.4f}")
        return "\n".join(lines)


def image_class_fractions(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the labelled pixels of one train-id map taken by each class (all 0 if none labelled)."""
    counts = cv2.calcHist([label], [0], None, [256], [0, 256]).ravel()[:num_classes].astype(np.float64)
    labelled = counts.sum()
    return counts / labelled if labelled else counts


def compute_class_stats(dataset: SegmentationDataset, *, workers: int = 4, progress: bool = True,
                        strict: bool = False) -> ClassStats:
    """alpha, delta, gamma per class of the dataset's label space, over all its labelled images.

    A label that cannot be used (unreadable, truncated, ids outside the label space) is
    left out and listed in ``skipped``, or, with ``strict``, stops with its DatasetError."""
    if not dataset.labelled:
        raise DatasetError(f"{dataset!r}: class statistics need labels on every image")
    space = dataset.label_space
    k = space.num_classes
    skipped = SkippedSamples(strict)

    def fractions_of(index: int) -> np.ndarray | None:
        label = skipped.read(lambda: dataset.label(index))
        return None if label is None else image_class_fractions(label, k)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        read = [row for row in tqdm(pool.map(fractions_of, range(len(dataset))), total=len(dataset),
                                    disable=not progress, desc="class sizes", unit="image")
                if row is not None]
    if not read:
        raise DatasetError(f"{dataset!r}: no usable label, e.g. {skipped.messages()[0]}")
    fractions = np.stack(read)
    alpha, delta, gamma = np.zeros(k), np.zeros(k), np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    for c in range(k):
        present = fractions[:, c][fractions[:, c] > 0]
        counts[c] = present.size
        if present.size:
            alpha[c], gamma[c] = np.percentile(present, [10, 90])
            delta[c] = present.mean()
    clipped = np.clip(delta, alpha, gamma)
    moved = tuple(space.class_names[c] for c in np.flatnonzero(clipped != delta))
    if moved:
        warnings.warn(f"mean class size outside [10th, 90th percentile] for {', '.join(moved)}; "
                      f"delta clipped to the nearer bound", stacklevel=2)
    return ClassStats(space.class_names, space.name, alpha, clipped, gamma, counts, len(read), moved,
                      tuple(skipped.messages()))


def save_class_stats(stats: ClassStats, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats.to_dict(), f, indent=1)


def load_class_stats(path: str | Path, num_classes: int) -> ClassStats:
    """Read a stats file written by ``save_class_stats`` and check it fits a net of ``num_classes``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("class statistics file does not exist (write it with `fcnwild stats`)", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"not a readable JSON file: {err}", file=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"not a class statistics file (expected \"format\": \"{FORMAT}\")", file=path)
    try:
        names = tuple(str(n) for n in data["class_names"])
        arrays = {key: np.asarray(data[key], dtype=np.float64) for key in ("alpha", "delta", "gamma")}
        image_counts = np.asarray(data["image_counts"], dtype=np.int64)
        stated = int(data["num_classes"])
        stats = ClassStats(names, str(data["label_space"]), arrays["alpha"], arrays["delta"],
                           arrays["gamma"], image_counts, int(data["num_images"]),
                           tuple(data.get("delta_clipped", ())))
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"malformed class statistics ({type(err).__name__}: {err})", file=path) from None
    if stated != num_classes:
        raise DatasetError(f"statistics are for {stated} classes ({stats.label_space}); "
                           f"the net has {num_classes}", file=path)
    for key, values in (("class_names", names), ("image_counts", image_counts), *arrays.items()):
        if len(values) != stated:
            raise DatasetError(f"'{key}' has {len(values)} entries; num_classes is {stated}", file=path)
    for c, name in enumerate(names):
        a, d, g = stats.alpha[c], stats.delta[c], stats.gamma[c]
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in (a, d, g)):
            raise DatasetError(f"class '{name}': bounds {a}, {d}, {g} must be fractions in [0, 1]", file=path)
        if a > d or d > g:
            raise DatasetError(f"class '{name}': inconsistent bounds alpha={a} delta={d} gamma={g}; "
                               f"expected alpha <= delta <= gamma", file=path)
    return stats
