"""Caffe-style transforms: exact padding, image/label crop alignment, BGR order and mean, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from data_layouts import make_cityscapes

from fcnwild.base.errors import DatasetError
from fcnwild.data.datasets import open_dataset
from fcnwild.data.loader import BlobFeeder
from fcnwild.data.transforms import CaffeTransform
from fcnwild.nets.frontend import ARCHITECTURES

FRONT_END = ARCHITECTURES["frontend"]

MEAN = (72.39, 82.91, 73.16)


def coordinate_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image whose R, G hold the row and column, and a label holding (row + col) % 200."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=2).astype(np.uint8)
    return image, ((rows + cols) % 200).astype(np.uint8)


def reflect101_index(i: np.ndarray, n: int) -> np.ndarray:
    """Where reflect-101 padding reads from: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ..."""
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i < n, i, period - i)


def test_bgr_order_and_mean():
    image = np.empty((6, 9, 3), np.uint8)
    image[...] = (10, 20, 30)  # R, G, B
    data, _ = CaffeTransform(crop_size=None, margin=2, mirror=False)(image, None, np.random.default_rng(0))
    assert data.dtype == np.float32 and data.shape == (3, 10, 13)
    np.testing.assert_allclose(data[:, 0, 0], [30 - MEAN[0], 20 - MEAN[1], 10 - MEAN[2]], rtol=1e-6)


def test_exact_reflect101_padding_and_ignore_label_border():
    h, w, m = 5, 7, 4  # the margin exceeds the image height, so the reflection repeats
    image, label = coordinate_image(h, w)
    t = CaffeTransform(crop_size=None, margin=m, mirror=False, mean_bgr=(0, 0, 0), label_stride=1)
    data, out_label = t(image, label, np.random.default_rng(0))
    padded_rows = reflect101_index(np.arange(-m, h + m), h)
    padded_cols = reflect101_index(np.arange(-m, w + m), w)
    np.testing.assert_array_equal(data[2], padded_rows[:, None] * np.ones((1, w + 2 * m)))  # R is channel 2 in BGR
    np.testing.assert_array_equal(data[1], np.ones((h + 2 * m, 1)) * padded_cols[None, :])
    # The label is sampled from the margin on: it is the original label, no border.
    np.testing.assert_array_equal(out_label[0], label)
    t_wide = CaffeTransform(crop_size=2 * m + 8, margin=m, mirror=False, random_crop=False,
                            mean_bgr=(0, 0, 0), label_stride=1)
    _, centred = t_wide(image, label, np.random.default_rng(0))
    # Image 5x7 inside an 8x8 label window: the rest is ignore (255).
    assert centred.shape == (1, 8, 8)
    assert (centred == 255).sum() == 64 - h * w
    assert sorted(centred[centred != 255].astype(int).tolist()) == sorted(label.ravel().tolist())


@pytest.mark.parametrize("stride", [1, 8])
def test_crop_and_mirror_keep_image_and_label_aligned(stride):
    h, w, m, crop = 60, 90, 10, 2 * 10 + 32
    image, label = coordinate_image(h, w)
    t = CaffeTransform(crop_size=crop, margin=m, mirror=True, mean_bgr=(0, 0, 0), label_stride=stride)
    mirrored = 0
    for seed in range(12):
        data, out = t(image, label, np.random.default_rng(seed))
        assert data.shape == (3, crop, crop) and out.shape == (1, 32 // stride, 32 // stride)
        rows = data[2, m::stride, m::stride][: out.shape[1], : out.shape[2]]
        cols = data[1, m::stride, m::stride][: out.shape[1], : out.shape[2]]
        valid = out[0] != 255
        assert valid.any()
        # Wherever the label is real, it is the label of the image pixel under it.
        np.testing.assert_array_equal(out[0][valid], (rows + cols)[valid] % 200)
        mirrored += bool(cols[0, 0] > cols[0, -1])
    assert 0 < mirrored < 12


def test_random_crops_are_deterministic_under_a_seed_and_vary_across_seeds():
    image, label = coordinate_image(80, 100)
    t = CaffeTransform(crop_size=52, margin=10, scale=(0.8, 1.25))
    a = t(image, label, np.random.default_rng(3))
    b = t(image, label, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert any(not np.array_equal(a[0], t(image, label, np.random.default_rng(s))[0]) for s in range(4, 8))


def test_resize_keeps_label_values_nearest():
    image, label = coordinate_image(20, 30)
    data, out = CaffeTransform(crop_size=None, margin=0, mirror=False, resize=(60, 40), label_stride=1)(
        image, label, np.random.default_rng(0))
    assert data.shape == (3, 40, 60) and out.shape == (1, 40, 60)
    assert set(np.unique(out).tolist()) <= set(np.unique(label).tolist())


def test_invalid_settings():
    with pytest.raises(DatasetError, match="crop_size 501"):
        CaffeTransform(crop_size=501, margin=FRONT_END.margin,
                       label_stride=FRONT_END.stride)
    with pytest.raises(DatasetError, match="scale range"):
        CaffeTransform(scale=(1.5, 1.0))
    t = CaffeTransform(crop_size=None, margin=0)
    with pytest.raises(DatasetError, match="expected HxWx3 uint8 RGB"):
        t(np.zeros((4, 4), np.uint8), None, np.random.default_rng(0))


def test_blob_feeder_is_deterministic_across_worker_counts(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 3, "bremen": 2}, size=(40, 60))
    dataset = open_dataset(f"cityscapes:{tmp_path}", "val")
    t = CaffeTransform(crop_size=36, margin=10, scale=(0.9, 1.1), label_stride=8)

    def batches(workers):
        feeder = BlobFeeder(dataset, t, batch_size=2, workers=workers, seed=5)
        out = [next(feeder) for _ in range(4)]  # 8 samples: crosses into the second epoch
        feeder.close()
        return out

    serial, parallel = batches(0), batches(2)
    for a, b in zip(serial, parallel):
        assert set(a) == {"data", "label"}
        assert a["data"].shape == (2, 3, 36, 36) and a["label"].shape == (2, 1, 16 // 8, 16 // 8)
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    first_epoch = np.concatenate([b["data"] for b in serial[:3]])[:5]
    assert len({x.tobytes() for x in first_epoch}) == 5  # five different samples in epoch 0

    images_only = BlobFeeder(open_dataset(f"cityscapes:{tmp_path}?labels=0", "val"), t, batch_size=3,
                             label_blob=None, workers=0)
    assert set(next(images_only)) == {"data"}
    with pytest.raises(DatasetError, match="label_blob=None"):
        BlobFeeder(open_dataset(f"cityscapes:{tmp_path}?labels=0", "val"), t, batch_size=3, workers=0)
