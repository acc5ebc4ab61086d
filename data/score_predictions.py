"""Score a folder of saved label-id PNGs against a dataset split.

Predictions from any framework are compared on equal terms: a file pairs with
a sample when its path below the folder (without extension) has the sample's
prediction key — for Cityscapes, as in the official evaluator, any
``{city}_{seq}_{frame}*.png`` anywhere below the folder; for the other sets,
the sample's relative name (``00001``, ``SYNTHIA-SEQS-01-FALL/000000``).
Pairs are decoded and counted on a thread pool: OpenCV decodes and counts
without holding the GIL.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import SegmentationDataset, SkippedSamples, relative_name
from fcnwild.data.evaluation import (
    ConfusionMatrix,
    EvaluationResult,
    as_label_map,
    joint_histogram,
)
from fcnwild.data.images import read_label_png
from fcnwild.data.labels import lut_from_mapping

ENCODINGS = ("label_id", "train_id")


def match_predictions(dataset: SegmentationDataset, pred_dir: str | Path) -> list[Path]:
    """The prediction file of every sample, in dataset order; errors name what is missing or ambiguous."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError("prediction folder does not exist", file=pred_dir)
    by_key: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        key = dataset.prediction_key(relative_name(path, pred_dir))
        if key in by_key:
            raise DatasetError(f"two predictions for '{key}': {by_key[key]} and {path} "
                               f"(colour and label-id PNGs in one tree? point at the labelIds folder)",
                               file=pred_dir)
        by_key[key] = path
    matched, missing = [], []
    for name in dataset.names():
        path = by_key.get(dataset.prediction_key(name))
        (matched if path is not None else missing).append(path if path is not None else name)
    if missing:
        raise DatasetError(f"no prediction for {len(missing)} of {len(dataset)} samples, e.g. "
                           f"{', '.join(missing[:3])}; found {len(by_key)} PNGs", file=pred_dir)
    return matched


def _pair_histogram(dataset: SegmentationDataset, index: int, pred_path: Path,
                    skipped: SkippedSamples) -> np.ndarray:
    """(ground-truth train id, prediction value) pixel counts of one sample."""
    nothing = np.zeros((256, 256), dtype=np.int64)
    label_path = dataset.entries[index].label
    by_id = dataset.id_lut is not None and dataset.id_lut.shape[0] == 256    # 8-bit id files
    gt = skipped.read(lambda: dataset.read_label_ids(label_path) if by_id else dataset.label(index))
    if gt is None:
        return nothing
    pred = read_label_png(pred_path)
    if pred.shape != gt.shape:
        raise DatasetError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                           f"{label_path} is {gt.shape[1]}x{gt.shape[0]}", file=pred_path)
    pred = as_label_map(pred)
    if not by_id:
        return joint_histogram(gt, pred)
    if gt.dtype != np.uint8:        # 16-bit ids do not fit 256 count rows: map the pixels
        ids = gt
        gt = skipped.read(lambda: dataset.train_ids(ids, label_path))
        return nothing if gt is None else joint_histogram(gt, pred)
    # Counts of (label id, prediction): the 256 id rows are checked and mapped to train ids
    # here, instead of checking and mapping two million pixels (a third of the scoring time).
    counts = joint_histogram(gt, pred)
    checked = skipped.read(lambda: dataset.check_declared_counts(counts.sum(1), label_path) or True)
    if checked is None:
        return nothing
    joint = np.zeros((256, 256), dtype=np.int64)
    np.add.at(joint, dataset.id_lut, counts)
    return joint


def score_predictions(dataset: SegmentationDataset, pred_dir: str | Path, *, encoding: str = "label_id",
                      workers: int = 4, progress: bool = True, strict: bool = False) -> EvaluationResult:
    """Per-class IoU of the PNGs in ``pred_dir`` (label ids of the dataset's label space, or
    train ids with ``encoding="train_id"``) over the whole split.

    A sample whose ground truth cannot be used is left out and listed in the result
    (``skipped``), or, with ``strict``, stops the scoring; a broken prediction file always
    stops it (it is the thing being scored)."""
    if encoding not in ENCODINGS:
        raise DatasetError(f"prediction encoding '{encoding}': expected one of {', '.join(ENCODINGS)}")
    if not dataset.labelled:
        raise DatasetError(f"{dataset!r}: cannot score predictions without labels")
    paths = match_predictions(dataset, pred_dir)
    space = dataset.label_space
    pred_lut = (space.id_lut() if encoding == "label_id"
                else lut_from_mapping({k: k for k in range(space.num_classes)}))
    joint = np.zeros((256, 256), dtype=np.int64)
    skipped = SkippedSamples(strict)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_pair_histogram, dataset, i, p, skipped) for i, p in enumerate(paths)]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                               desc="scoring", unit="image"):
                joint += future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    confusion = ConfusionMatrix(space.num_classes)
    confusion.add_joint(joint, pred_lut)
    used = len(dataset) - len(skipped)
    return EvaluationResult(space, confusion, used,
                            title=f"{dataset.family} {dataset.split}: {used} images, {pred_dir}",
                            skipped=tuple(skipped.messages()))
