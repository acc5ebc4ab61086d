"""Reading a binary BlobProto file (``.binaryproto``) as Caffe's ``Blob::FromProto`` does.

Layers read such files for fixed arrays (InfogainLoss's matrix H, mean files): the
shape is the legacy ``num, channels, height, width`` when any of those is set, else
``shape.dim``; the values come from ``double_data`` when present, else ``data``.
"""
from __future__ import annotations

import os

import numpy as np
from google.protobuf.message import DecodeError

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import FcnwildError


def read_blob_proto(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the binary BlobProto file ``path`` (float32, Caffe's shape)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise FcnwildError(f"cannot read the BlobProto file ({err.strerror})",
                           file=path) from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except DecodeError as err:
        raise FcnwildError(f"not a binary BlobProto ({err})", file=path) from None
    legacy = [blob.HasField(f) for f in ("num", "channels", "height", "width")]
    if any(legacy):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(int(d) for d in blob.shape.dim)
    values = blob.double_data if len(blob.double_data) else blob.data
    expected = int(np.prod(shape, dtype=np.int64))
    if len(values) != expected or min(shape, default=1) < 0:
        raise FcnwildError(f"the BlobProto holds {len(values)} values for its shape {shape} "
                           f"({expected} expected)", file=path)
    return np.asarray(values, dtype=np.float32).reshape(shape)
