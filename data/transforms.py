"""Caffe-style input transforms, step by step and explicit.

The order and arithmetic are those of fyu/caffe-dilation's ImageLabelData layer
(``src/caffe/layers/image_label_data_layer.cpp``) feeding Caffe's
DataTransformer, which the dilated front-end was trained with:

1. optional fixed resize, then optional random scale (labels: nearest;
   image: cubic when enlarging, area when shrinking);
2. RGB -> BGR, pixel values kept in 0..255 (imported VGG weights expect this);
3. the image is padded by the net's margin (its context per side) with
   reflect-101 borders and the label by the same margin with 255 (ignore), so
   every label pixel sees real-looking context; images still smaller than the
   crop are padded to it, centred, in the same way;
4. one crop of ``crop_size`` at the same offset in image and label (random in
   training, centred otherwise), then an optional horizontal mirror of both;
5. per-channel BGR mean subtraction, float32, CHW;
6. the label is sampled at ``label_stride`` starting at the margin: the
   front-end's score map pixel (i, j) sees input pixel
   (margin + stride*i, margin + stride*j).

``crop_size`` is the net's input side, Caffe's ``transform_param.crop_size``
(500 gives a 16x16 label at stride 8, as in fyu/dilation's train.py).
All randomness comes from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fcnwild.base.errors import DatasetError
from fcnwild.data.labels import CITYSCAPES_MEAN_BGR, IGNORE


def pad_reflect101(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect-101 padding (``dcb|abcd|cba``), repeated when the border exceeds the image."""
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101)


def pad_constant(label: np.ndarray, top: int, bottom: int, left: int, right: int,
                 value: int = IGNORE) -> np.ndarray:
    return cv2.copyMakeBorder(label, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)


def _pad_to_min_size(array: np.ndarray, size: int, value: int | None) -> np.ndarray:
    rows, cols = array.shape[:2]
    if rows >= size and cols >= size:
        return array
    top = (size - rows) // 2 if rows < size else 0
    bottom = size - rows - top if rows < size else 0
    left = (size - cols) // 2 if cols < size else 0
    right = size - cols - left if cols < size else 0
    # caffe-dilation's PadImage passes (right, left) into copyMakeBorder's (left, right)
    # slots; kept so crops of small images match its data layer pixel for pixel.
    left, right = right, left
    if value is None:
        return pad_reflect101(array, top, bottom, left, right)
    return pad_constant(array, top, bottom, left, right, value)


def _resize(image: np.ndarray, label: np.ndarray | None, width: int, height: int
            ) -> tuple[np.ndarray, np.ndarray | None]:
    enlarging = width * height > image.shape[0] * image.shape[1]
    image = cv2.resize(image, (width, height),
                       interpolation=cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA)
    if label is not None:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


@dataclass(frozen=True)
class CaffeTransform:
    """One training (or test) sample: RGB uint8 image + train-id label -> the net's data/label blobs."""

    crop_size: int | None = None    # None: the whole (padded) image
    margin: int = 0                 # the net's context margin per side (FrontEnd.margin)
    mean_bgr: tuple[float, float, float] = CITYSCAPES_MEAN_BGR
    mirror: bool = True
    random_crop: bool = True
    scale: tuple[float, float] | None = None
    resize: tuple[int, int] | None = None
    label_stride: int = 1

    def __post_init__(self) -> None:
        if self.margin < 0 or self.label_stride < 1:
            raise DatasetError(f"margin {self.margin} and label_stride {self.label_stride}: "
                               f"expected margin >= 0 and stride >= 1")
        if self.crop_size is not None:
            extent = self.crop_size - 2 * self.margin
            if extent <= 0 or extent % self.label_stride:
                raise DatasetError(
                    f"crop_size {self.crop_size}: crop minus twice the margin ({self.margin}) must be "
                    f"a positive multiple of the label stride {self.label_stride} (e.g. 500 for the front-end)")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise DatasetError(f"scale range {self.scale}: expected 0 < min <= max")

    def label_shape(self, image_height: int, image_width: int) -> tuple[int, int]:
        """Shape of the label blob's spatial part for an image of this size (after any resize)."""
        if self.crop_size is not None:
            side = (self.crop_size - 2 * self.margin) // self.label_stride
            return side, side
        return (-(-image_height // self.label_stride), -(-image_width // self.label_stride))

    def __call__(self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns (data float32 3xHxW in BGR minus mean, label float32 1xhxw or None)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetError(f"image of shape {image.shape} and type {image.dtype}: "
                               f"expected HxWx3 uint8 RGB")
        if label is not None and label.shape != image.shape[:2]:
            raise DatasetError(f"label of shape {label.shape} for an image of shape {image.shape[:2]}")
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if self.resize is not None:
            bgr, label = _resize(bgr, label, *self.resize)
        if self.scale is not None:
            s = rng.uniform(*self.scale)
            rows, cols = bgr.shape[:2]
            bgr, label = _resize(bgr, label, max(1, round(cols * s)), max(1, round(rows * s)))

        m = self.margin
        bgr = pad_reflect101(bgr, m, m, m, m)
        if label is not None:
            label = pad_constant(label, m, m, m, m)
        if self.crop_size is not None:
            bgr = _pad_to_min_size(bgr, self.crop_size, None)
            if label is not None:
                label = _pad_to_min_size(label, self.crop_size, IGNORE)

        do_mirror = self.mirror and bool(rng.integers(2))
        if self.crop_size is not None:
            rows, cols = bgr.shape[:2]
            c = self.crop_size
            if self.random_crop:
                top, left = int(rng.integers(rows - c + 1)), int(rng.integers(cols - c + 1))
            else:
                top, left = (rows - c) // 2, (cols - c) // 2
            bgr = bgr[top:top + c, left:left + c]
            if label is not None:
                label = label[top:top + c, left:left + c]
        if do_mirror:
            bgr = bgr[:, ::-1]
            if label is not None:
                label = label[:, ::-1]

        data = (bgr.astype(np.float32) - np.asarray(self.mean_bgr, dtype=np.float32)).transpose(2, 0, 1)
        if label is None:
            return np.ascontiguousarray(data), None
        rows, cols = self.label_shape(bgr.shape[0] - 2 * m, bgr.shape[1] - 2 * m)
        s = self.label_stride
        sampled = label[m:m + rows * s:s, m:m + cols * s:s]
        return np.ascontiguousarray(data), sampled.astype(np.float32)[None]
