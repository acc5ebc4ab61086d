"""Broken datasets: unreadable or truncated images and labels, label ids outside the
label space. Each is a DatasetError naming the file; evaluation, class statistics and
the loader leave such samples out and report them, or stop at the first with strict.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from data_layouts import (
    make_cityscapes,
    make_gta5,
    make_synthia_rand,
    random_rgb,
    write_grey,
    write_palette,
    write_synthia_label,
)

from fcnwild.base.errors import DatasetError
from fcnwild.data.class_stats import compute_class_stats
from fcnwild.data.datasets import open_dataset
from fcnwild.data.images import read_image_rgb, read_label_png
from fcnwild.data.inference import evaluate_net
from fcnwild.data.loader import BlobFeeder
from fcnwild.data.score_predictions import score_predictions
from fcnwild.data.transforms import CaffeTransform
from fcnwild.tools import eval_cmd, stats_cmd


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _raises_naming(path: Path, read, match: str) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as info:
        read(path)
    assert type(info.value) is DatasetError and info.value.file == str(path)
    return info.value


# ------------------------------------------------------------------ single files
def test_truncated_png_jpeg_and_garbage_images(tmp_path):
    image = random_rgb(np.random.default_rng(0), 40, 60)
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"image{suffix}"
        assert cv2.imwrite(str(path), image)
        assert read_image_rgb(path).shape == (40, 60, 3)
        # OpenCV would return a truncated JPEG, grey where the data stopped
        match = "truncated JPEG" if suffix == ".jpg" else "not a readable image"
        _raises_naming(_truncate(path), read_image_rgb, match)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _raises_naming(garbage, read_image_rgb, "not a readable image")
    _raises_naming(tmp_path / "absent.png", read_image_rgb, "does not exist")


def test_truncated_and_garbage_labels(tmp_path):
    label = tmp_path / "label.png"
    write_grey(label, np.random.default_rng(1).integers(0, 34, (30, 40)))
    _raises_naming(_truncate(label), read_label_png, "not a readable image|cannot read label")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    _raises_naming(garbage, read_label_png, "cannot read label image")


# ------------------------------------------------------------------ label spaces
def _cityscapes_label(root: Path) -> Path:
    return next((root / "gtFine" / "val").rglob("*_labelIds.png"))


@pytest.mark.parametrize("family, value, expected", [
    ("cityscapes", 34, "label holds ids 34, outside the cityscapes label ids (0..33)"),
    ("cityscapes", 200, "label holds ids 200, outside the cityscapes label ids (0..33)"),
    ("gta5", 40, "label holds ids 40, outside the gta5 label ids (0..33)"),
    ("bdd", 19, "label holds ids 19, outside the bdd label ids (0..18, 255)"),
    ("bdd", 254, "label holds ids 254, outside the bdd label ids (0..18, 255)"),
    ("synthia", 23, "label holds ids 23, outside the synthia label ids (0..22)"),
])
def test_label_ids_outside_the_label_space_name_the_file(tmp_path, family, value, expected):
    rng = np.random.default_rng(2)
    if family == "cityscapes":
        make_cityscapes(tmp_path, cities={"aachen": 1}, size=(8, 10))
        label = _cityscapes_label(tmp_path)
        ids = read_label_png(label)
        ids[3, 4] = value
        write_grey(label, ids)
    elif family == "gta5":
        make_gta5(tmp_path, frames=1, size=(8, 10))
        label = tmp_path / "labels" / "00001.png"
        ids = read_label_png(label).copy()
        ids[0, 0] = value
        write_palette(label, ids)
    elif family == "bdd":
        (tmp_path / "images" / "val").mkdir(parents=True)
        assert cv2.imwrite(str(tmp_path / "images" / "val" / "a.jpg"), random_rgb(rng, 8, 10))
        ids = rng.integers(0, 19, (8, 10)).astype(np.uint8)
        ids[0, :3] = 255                      # ignore is declared
        ids[5, 5] = value
        label = tmp_path / "labels" / "val" / "a_train_id.png"
        write_grey(label, ids)
    else:
        make_synthia_rand(tmp_path, frames=1, size=(8, 10))
        label = tmp_path / "GT" / "LABELS" / "0000000.png"
        ids = rng.integers(0, 23, (8, 10)).astype(np.uint16)
        ids[7, 9] = value
        write_synthia_label(label, ids, np.zeros((8, 10), np.uint16))
    split = "val" if family in ("cityscapes", "bdd") else None
    dataset = open_dataset(f"{family}:{tmp_path}", split)
    with pytest.raises(DatasetError, match=re.escape(expected)) as info:
        dataset.label(0)
    assert info.value.file == str(label)


# ------------------------------------------------------------------ passes over a dataset
@pytest.fixture
def broken_cityscapes(tmp_path) -> tuple[Path, dict[str, np.ndarray], list[Path]]:
    """Four frames: one truncated label, one with an id past 33, two good ones."""
    written = make_cityscapes(tmp_path / "cs", cities={"aachen": 2, "bremen": 2}, size=(12, 20))
    labels = sorted((tmp_path / "cs" / "gtFine" / "val").rglob("*_labelIds.png"))
    _truncate(labels[0])
    ids = read_label_png(labels[2])
    ids[1, 1] = 99
    write_grey(labels[2], ids)
    return tmp_path / "cs", written, [labels[0], labels[2]]


def _write_perfect_predictions(folder: Path, written: dict[str, np.ndarray]) -> None:
    for name, ids in written.items():
        stem = name.split("/")[1].replace("_leftImg8bit", "")
        write_grey(folder / f"{stem}_labelIds.png", ids)


def test_scoring_skips_bad_samples_or_stops_when_strict(tmp_path, broken_cityscapes):
    root, written, bad = broken_cityscapes
    _write_perfect_predictions(tmp_path / "pred", written)
    dataset = open_dataset(f"cityscapes:{root}", "val")
    result = score_predictions(dataset, tmp_path / "pred", workers=2, progress=False)
    assert result.num_images == 2 and len(result.skipped) == 2
    assert sorted(str(b) for b in bad) == sorted(m.split(":")[0] for m in result.skipped)
    assert result.mean_iou["19"] == 1.0
    with pytest.raises(DatasetError) as info:
        score_predictions(dataset, tmp_path / "pred", workers=1, progress=False, strict=True)
    assert info.value.file == str(bad[0])


class _ConstantPredictor:
    """Predicts class 0 everywhere: what matters here is which samples are scored."""
    output_blob = "prob"

    def scores(self, image: np.ndarray) -> np.ndarray:
        out = np.zeros((19, *image.shape[:2]), np.float32)
        out[0] = 1
        return out


def test_model_evaluation_skips_bad_samples_or_stops_when_strict(broken_cityscapes):
    root, _, bad = broken_cityscapes
    dataset = open_dataset(f"cityscapes:{root}", "val")
    result = evaluate_net(_ConstantPredictor(), dataset, progress=False)
    assert result.num_images == 2 and [m.split(":")[0] for m in result.skipped] == \
        [str(b) for b in bad]
    with pytest.raises(DatasetError) as info:
        evaluate_net(_ConstantPredictor(), dataset, progress=False, strict=True)
    assert info.value.file == str(bad[0])


def test_class_stats_skip_bad_labels_or_stop_when_strict(broken_cityscapes):
    root, written, bad = broken_cityscapes
    dataset = open_dataset(f"cityscapes:{root}", "val")
    stats = compute_class_stats(dataset, workers=2, progress=False)
    good = compute_class_stats(open_dataset(f"cityscapes:{root}", "val"), workers=1, progress=False)
    assert stats.num_images == 2 and sorted(m.split(":")[0] for m in stats.skipped) == \
        sorted(str(b) for b in bad)
    np.testing.assert_array_equal(stats.delta, good.delta)
    with pytest.raises(DatasetError) as info:
        compute_class_stats(dataset, workers=1, progress=False, strict=True)
    assert info.value.file == str(bad[0])


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_eval_and_stats_commands_report_skips_and_honour_strict(tmp_path, broken_cityscapes,
                                                                 capsys):
    root, written, bad = broken_cityscapes
    _write_perfect_predictions(tmp_path / "pred", written)
    common = ["--dataset", f"cityscapes:{root}", "--split", "val", "--no-progress"]
    assert _run(eval_cmd, common + ["--predictions", str(tmp_path / "pred"),
                                    "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 sample(s)" in err and all(str(b) in err for b in bad)
    assert len(json.loads((tmp_path / "r.json").read_text())["skipped"]) == 2
    assert _run(stats_cmd, common + ["--out", str(tmp_path / "s.json")]) == 0
    assert "skipped 2 sample(s)" in capsys.readouterr().err
    for module, extra in ((eval_cmd, ["--predictions", str(tmp_path / "pred")]),
                          (stats_cmd, ["--out", str(tmp_path / "s2.json")])):
        with pytest.raises(DatasetError) as info:
            _run(module, common + extra + ["--strict", "--workers", "1"])
        assert info.value.file in {str(b) for b in bad}


def test_loader_replaces_bad_samples_deterministically_or_stops_when_strict(broken_cityscapes):
    root, _, bad = broken_cityscapes
    dataset = open_dataset(f"cityscapes:{root}", "val")
    transform = CaffeTransform(crop_size=12, margin=2, mirror=False)

    def read(strict: bool = False):
        feeder = BlobFeeder(dataset, transform, batch_size=2, workers=0, seed=3, shuffle=False,
                            strict=strict)
        batches = [next(feeder) for _ in range(2)]
        return batches, feeder.skipped
    batches, skipped = read()
    again, _ = read()
    assert sorted(m.split(":")[0] for m in skipped) == sorted(str(b) for b in bad)
    for a, b in zip(batches, again):
        assert a["data"].shape == (2, 3, 12, 12)
        np.testing.assert_array_equal(a["data"], b["data"])
    # samples 0 and 2 are bad: in order the stream reads 1, 1, 3, 3
    np.testing.assert_array_equal(batches[0]["data"][0], batches[0]["data"][1])
    with pytest.raises(DatasetError) as info:
        read(strict=True)
    assert info.value.file == str(bad[0])
