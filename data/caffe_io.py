"""Caffe's util/io.cpp: images decoded as Caffe decodes them, Datum records, BlobProto files.

Images go through OpenCV with Caffe's flags (``cv::imread``/``cv::imdecode``):
colour images are BGR, ``IMREAD_COLOR`` replicates a grey file to three
channels and ``IMREAD_GRAYSCALE`` converts colour to grey (libjpeg's own grey
decode for JPEGs), resizing is ``cv::resize`` INTER_LINEAR on the 8-bit pixels.
Arrays come back channel-first (C, H, W), the layout of Caffe's blobs and of a
raw Datum. Where Caffe logs and goes on with an empty image or reads past a
record's end, these functions raise a DatasetError naming the file or record.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import cv2
import numpy as np
from google.protobuf.message import DecodeError

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError

# A JPEG's end-of-image marker sits in its last bytes (trailing padding aside); without
# it OpenCV decodes the missing part as grey instead of failing.
_JPEG_START, _JPEG_END, _JPEG_TAIL = b"\xff\xd8", b"\xff\xd9", 4096


def decode_image(data: bytes, flags: int, source: str | PathLike) -> np.ndarray:
    """Encoded image bytes -> (C, H, W) uint8 array, as ``cv::imdecode(data, flags)``.

    ``source`` names the file or record in errors. Only 8-bit images are accepted:
    Caffe's transformer rejects any other depth.
    """
    if data[:2] == _JPEG_START and _JPEG_END not in data[-_JPEG_TAIL:]:
        raise DatasetError("truncated JPEG: no end-of-image marker", file=source)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise DatasetError("not a decodable image (corrupt, truncated or not an image)",
                           file=source)
    if image.dtype != np.uint8:
        raise DatasetError(f"{image.dtype} pixels; Caffe's data layers need 8-bit images",
                           file=source)
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)


def read_image(path: str | PathLike, *, color: bool = True, height: int = 0,
               width: int = 0) -> np.ndarray:
    """Caffe's ReadImageToCVMat: an image file as (C, H, W) uint8, BGR (C = 3) when
    ``color`` else grey (C = 1), resized to ``height`` x ``width`` when both are > 0."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read image ({err.strerror or err})", file=path) from None
    image = decode_image(data, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE, path)
    if height > 0 and width > 0:
        return resize(image, height, width)
    return image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize`` INTER_LINEAR of a (C, H, W) uint8 image (OpenCV's fixed-point path)."""
    hwc = cv2.resize(np.ascontiguousarray(image.transpose(1, 2, 0)), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    return hwc[np.newaxis] if hwc.ndim == 2 else hwc.transpose(2, 0, 1)


def parse_datum(value: bytes, source: str) -> caffe_pb2.Datum:
    """A serialized Datum; ``source`` names the store and record key in errors."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as err:
        raise DatasetError(f"not a Caffe Datum record ({err})", file=source) from None
    return datum


def datum_array(datum: caffe_pb2.Datum, source: str, *, color: bool | None = None
                ) -> np.ndarray:
    """A Datum's pixels as a (C, H, W) array: uint8 for ``data``, float32 for
    ``float_data``. An encoded Datum is decoded with its own channel count when
    ``color`` is None (DecodeDatumToCVMatNative), else as colour / grey."""
    if datum.encoded:
        flags = cv2.IMREAD_UNCHANGED if color is None else \
            cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
        return decode_image(datum.data, flags, source)
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) <= 0:
        raise DatasetError(f"Datum has channels/height/width {shape}; all must be > 0",
                           file=source)
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise DatasetError(f"Datum holds {len(datum.data)} bytes of data for a "
                               f"{'x'.join(map(str, shape))} image ({count} expected)",
                               file=source)
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DatasetError(f"Datum holds {len(datum.float_data)} float_data values for a "
                           f"{'x'.join(map(str, shape))} image ({count} expected)",
                           file=source)
    return np.asarray(datum.float_data, np.float32).reshape(shape)


