"""Evaluation: agreement with the official Cityscapes evaluator, confusion counts, tables, export."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from data_layouts import make_cityscapes, write_grey
from PIL import Image

from fcnwild.base.errors import DatasetError
from fcnwild.data import evaluation
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import (
    ConfusionMatrix,
    EvaluationResult,
    PredictionWriter,
    joint_histogram,
)
from fcnwild.data.labels import CITYSCAPES19, CITYSCAPES_PALETTE
from fcnwild.data.score_predictions import score_predictions


def official_scores(pred_files, gt_files, monkeypatch) -> dict:
    """cityscapesscripts' evaluateImgLists with instance-level scoring off."""
    for name, value in {"evalInstLevelScore": False, "JSONOutput": False, "quiet": True,
                        "evalPixelAccuracy": False}.items():
        monkeypatch.setattr(official.args, name, value)
    return official.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], official.args)


def write_random_predictions(tmp_path, written, rng, absent_ids=()):
    pred_dir = tmp_path / "results"
    pairs = []
    for name, gt_ids in written.items():
        city, stem = name.split("/")
        pred = rng.integers(0, 34, gt_ids.shape, dtype=np.uint8)
        for absent in absent_ids:
            pred[pred == absent] = 0
        pred_file = pred_dir / city / f"{stem.replace('_leftImg8bit', '')}_pred.png"
        write_grey(pred_file, pred)
        gt_file = tmp_path / "gtFine/val" / city / f"{stem.replace('_leftImg8bit', '')}_gtFine_labelIds.png"
        pairs.append((pred_file, gt_file))
    return pred_dir, pairs


def test_matches_official_cityscapes_evaluator_on_random_maps(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    written = make_cityscapes(tmp_path, cities={"aachen": 2, "bremen": 2}, size=(48, 80), seed=7)
    # 'train' (31) absent from ground truth and predictions: NaN for both evaluators.
    # 'truck' (27) absent from ground truth only: IoU 0 for both.
    for name, ids in written.items():
        ids[ids == 31] = 7
        ids[ids == 27] = 8
        city, stem = name.split("/")
        write_grey(tmp_path / "gtFine/val" / city / f"{stem.replace('_leftImg8bit', '')}_gtFine_labelIds.png", ids)
    pred_dir, pairs = write_random_predictions(tmp_path, written, rng, absent_ids=(31,))
    theirs = official_scores([p for p, _ in pairs], [g for _, g in pairs], monkeypatch)

    ours = score_predictions(open_dataset(f"cityscapes:{tmp_path}", "val"), pred_dir, workers=2, progress=False)
    for k, name in enumerate(CITYSCAPES19.class_names):
        expected = theirs["classScores"][name]
        if math.isnan(expected):
            assert math.isnan(ours.iou[k]), name
        else:
            assert abs(ours.iou[k] - expected) <= 1e-9, name
    assert math.isnan(ours.iou[CITYSCAPES19.class_names.index("train")])
    assert ours.iou[CITYSCAPES19.class_names.index("truck")] == 0
    assert abs(ours.mean_iou["19"] - theirs["averageScoreClasses"]) <= 1e-9
    assert ours.num_images == 4


def test_confusion_matrix_against_explicit_counting():
    rng = np.random.default_rng(0)
    k = 5
    gt = rng.integers(0, 8, (30, 41)).astype(np.uint8)
    gt[gt >= k] = 255
    pred = rng.integers(0, 7, (30, 41)).astype(np.uint8)
    matrix = ConfusionMatrix(k)
    matrix.add(gt, pred)
    expected = np.zeros((k, k + 1), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g < k:
            expected[g, min(p, k)] += 1
    np.testing.assert_array_equal(matrix.counts, expected)
    tp = np.diag(expected[:, :k])
    iou = tp / (expected.sum(1) + expected[:, :k].sum(0) - tp)
    np.testing.assert_allclose(matrix.iou(), iou, rtol=1e-12)
    assert matrix.pixel_accuracy() == pytest.approx(tp.sum() / expected.sum())


def test_joint_histogram_counts_exactly_in_row_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    b = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    expected = np.bincount(a.astype(np.int64).ravel() * 256 + b.ravel(), minlength=65536).reshape(256, 256)
    np.testing.assert_array_equal(joint_histogram(a, b), expected)
    monkeypatch.setattr(evaluation, "_EXACT_FLOAT32_COUNT", 200)  # forces blocks of 2 rows
    np.testing.assert_array_equal(joint_histogram(a, b), expected)


def test_predictions_of_ignored_ids_are_false_negatives_not_false_positives():
    matrix = ConfusionMatrix(19)
    lut = CITYSCAPES19.id_lut()
    gt = np.array([[0, 0, 1, 255]], np.uint8)             # road, road, sidewalk, ignore
    pred_ids = np.array([[7, 0, 7, 8]], np.uint8)          # road, unlabeled, road, sidewalk
    matrix.add(gt, pred_ids, pred_lut=lut)
    iou = matrix.iou()
    assert iou[0] == pytest.approx(1 / 3)  # tp 1, fn 1 (the 'unlabeled' prediction), fp 1 (sidewalk pixel)
    assert iou[1] == 0                      # the sidewalk pixel on ignore ground truth is no FP
    assert math.isnan(iou[2])


def test_means_over_the_paper_subsets_and_outputs(tmp_path):
    matrix = ConfusionMatrix(19)
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 19, (64, 64)).astype(np.uint8)
    pred = np.where(rng.random((64, 64)) < 0.6, gt, rng.integers(0, 19, (64, 64))).astype(np.uint8)
    matrix.add(gt, pred)
    result = EvaluationResult(CITYSCAPES19, matrix, 1, title="demo")
    names = CITYSCAPES19.class_names
    sixteen = [k for k, n in enumerate(names) if n not in ("terrain", "truck", "train")]
    thirteen = [k for k in sixteen if names[k] not in ("wall", "fence", "pole")]
    assert result.mean_iou["19"] == pytest.approx(np.mean(result.iou))
    assert result.mean_iou["16"] == pytest.approx(np.mean(result.iou[sixteen]))
    assert result.mean_iou["13"] == pytest.approx(np.mean(result.iou[thirteen]))
    table = result.table().splitlines()
    assert table[1].split()[:3] == ["road", "sidewalk", "building"] and table[1].split()[-4:] == \
        ["mIoU19", "mIoU16", "mIoU13", "pixacc"]
    assert float(table[2].split()[0]) == pytest.approx(100 * result.iou[0], abs=0.05)

    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["mean_iou"]["16"] == pytest.approx(result.mean_iou["16"])
    assert data["iou"]["bicycle"] == pytest.approx(result.iou[18])
    result.write_csv(tmp_path / "r.csv")
    header, row = list(csv.reader(open(tmp_path / "r.csv")))
    assert header[:19] == list(names) and header[19:] == ["mIoU19", "mIoU16", "mIoU13", "pixel_accuracy"]
    assert float(row[19]) == pytest.approx(result.mean_iou["19"], abs=1e-6)


def test_exported_predictions_score_perfectly_and_use_the_palette(tmp_path):
    written = make_cityscapes(tmp_path, cities={"aachen": 1, "bremen": 1}, size=(12, 20))
    dataset = open_dataset(f"cityscapes:{tmp_path}", "val")
    writer = PredictionWriter(tmp_path / "out", dataset.label_space)
    for i, name in enumerate(dataset.names()):
        writer.write(name, dataset.label(i))
    name = dataset.names()[0]
    ids = np.asarray(Image.open(tmp_path / "out/labelIds" / f"{name}.png"))
    gt_ids = written[name]
    evaluated = np.isin(gt_ids, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    np.testing.assert_array_equal(ids[evaluated], gt_ids[evaluated])
    assert (ids[~evaluated] == 0).all()  # ignore -> 'unlabeled'
    color = np.asarray(Image.open(tmp_path / "out/color" / f"{name}.png").convert("RGB"))
    train = dataset.label(0)
    np.testing.assert_array_equal(color[train == 0], np.broadcast_to(CITYSCAPES_PALETTE[0], color[train == 0].shape))
    assert (color[train == 255] == 0).all()
    result = score_predictions(dataset, tmp_path / "out/labelIds", progress=False)
    assert np.nanmin(result.iou) == 1.0 and result.pixel_accuracy == 1.0


def test_train_id_predictions_and_folder_errors(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 2}, size=(12, 20))
    dataset = open_dataset(f"cityscapes:{tmp_path}", "val")
    pred_dir = tmp_path / "pred"
    for i, name in enumerate(dataset.names()):
        write_grey(pred_dir / f"{name}.png", dataset.label(i))
    result = score_predictions(dataset, pred_dir, encoding="train_id", progress=False)
    assert np.nanmin(result.iou) == 1.0

    write_grey(pred_dir / "extra" / f"{dataset.names()[0].split('/')[1]}.png", dataset.label(0))
    with pytest.raises(DatasetError, match="two predictions for 'aachen_000000_000019'"):
        score_predictions(dataset, pred_dir, progress=False)
    (pred_dir / "extra" / f"{dataset.names()[0].split('/')[1]}.png").unlink()
    (pred_dir / f"{dataset.names()[1]}.png").unlink()
    with pytest.raises(DatasetError, match="no prediction for 1 of 2 samples, e.g. aachen/aachen_000001_000020"):
        score_predictions(dataset, pred_dir, progress=False)
    write_grey(pred_dir / f"{dataset.names()[1]}.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DatasetError, match="prediction is 5x5 but the ground truth .* is 20x12"):
        score_predictions(dataset, pred_dir, progress=False)
