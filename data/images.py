"""Reading and writing the image and label files of the datasets.

OpenCV decodes (it is the faster PNG decoder here and releases the GIL, so
evaluation threads run in parallel); Pillow only reads headers and palette
PNGs. Pillow cannot hold 16-bit-per-channel RGB: it silently keeps the high
byte of each sample, so SYNTHIA's GT/LABELS (16-bit RGB, class id in the first
channel) would read as all zeros — those go through OpenCV's IMREAD_UNCHANGED.
Every failure becomes a DatasetError naming the file.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from fcnwild.base.errors import DatasetError

# EXIF rotation would move pixels away from their labels; Caffe's data layers never applied it.
_COLOR_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_UNCHANGED_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION


def _imread(path: str | PathLike, flags: int) -> np.ndarray:
    array = cv2.imread(str(path), flags)
    if array is None:
        what = "file does not exist" if not Path(path).is_file() else \
            "not a readable image (corrupt or truncated)"
        raise DatasetError(what, file=path)
    if _truncated_jpeg(path):
        raise DatasetError("truncated JPEG: no end-of-image marker (OpenCV would fill the "
                           "missing part with grey)", file=path)
    return array


def _truncated_jpeg(path: str | PathLike) -> bool:
    """A JPEG whose end-of-image marker (FF D9) is not near its end. OpenCV decodes a
    truncated PNG to None but a truncated JPEG to an image with its tail grey. The
    marker cannot occur inside entropy-coded data (an FF there is followed by 00 or
    a restart marker); the last 4 KiB leave room for trailing padding."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(0, 2)
        f.seek(max(2, f.tell() - 4096))
        return b"\xff\xd9" not in f.read()


def read_image_rgb(path: str | PathLike) -> np.ndarray:
    """An 8-bit colour image as a HxWx3 uint8 RGB array."""
    return cv2.cvtColor(_imread(path, _COLOR_FLAGS), cv2.COLOR_BGR2RGB)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: str | PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as err:
        raise DatasetError(f"cannot read image header: {err}", file=path) from None
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        # A PNG's first chunk is IHDR with width and height big-endian: a tenth of Pillow's cost,
        # which counts when a reader checks the sizes of every pair of a 25 000-frame set.
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"cannot read image header: {err}", file=path) from None


def read_label_png(path: str | PathLike) -> np.ndarray:
    """A single-channel label map (8- or 16-bit grey, or palette indices) as a 2-D array."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                # Palette PNGs (GTA5) store the class in the index; decoding to colours would lose it.
                return np.asarray(im)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"cannot read label image: {err}", file=path) from None
    if mode not in ("L", "I;16", "I;16B", "I"):
        raise DatasetError(f"label image has mode {mode}; expected a single-channel "
                           f"(grey or palette) PNG of label ids", file=path)
    return _imread(path, _UNCHANGED_FLAGS)


def read_label_channel(path: str | PathLike, channel: int = 0) -> np.ndarray:
    """One channel (0 = R) of a multi-channel, possibly 16-bit, label PNG, at its full depth."""
    array = _imread(path, _UNCHANGED_FLAGS)
    if array.ndim != 3 or array.shape[2] < 3:
        raise DatasetError(f"label image has {1 if array.ndim == 2 else array.shape[2]} "
                           f"channel(s); expected an RGB label PNG", file=path)
    return np.ascontiguousarray(array[:, :, 2 - channel])  # OpenCV keeps channels as BGR


def apply_lut(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map label ids through a uint8 lookup table (256 entries for 8-bit ids, 65536 for 16-bit)."""
    if ids.dtype == np.uint8 and lut.shape[0] == 256:
        return cv2.LUT(ids, lut)  # several times faster than numpy fancy indexing
    if ids.dtype.kind not in "ui" or (ids.size and int(ids.max()) >= lut.shape[0]):
        raise DatasetError(f"label ids of type {ids.dtype} exceed the {lut.shape[0]}-entry id map")
    return lut[ids]


def write_png(path: str | PathLike, array: np.ndarray, *, rgb: bool = False) -> None:
    """Write a uint8 label map (HxW) or an RGB image (HxWx3, ``rgb=True``) as PNG, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise DatasetError("could not write PNG", file=path)


def id_counts(ids: np.ndarray) -> np.ndarray:
    """How many pixels hold each value of an integer label map (index = value)."""
    if ids.dtype == np.uint8:
        return cv2.calcHist([ids], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    if ids.dtype.kind not in "ui" or (ids.size and int(ids.min()) < 0):
        raise DatasetError(f"label ids of type {ids.dtype} are not non-negative integers")
    return np.bincount(ids.reshape(-1))
