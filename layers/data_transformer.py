"""Caffe's DataTransformer: ``transform_param`` applied to one image of a data layer.

Per image, in Caffe's order: draw the mirror flip (``mirror``: with probability
1/2, in any phase), then the crop offsets (``crop_size``: uniform in TRAIN, the
centre in TEST), crop, subtract the mean (``mean_file``, a BlobProto the size
of the uncropped image, or ``mean_value``, one value or one per channel),
multiply by ``scale`` and flip. Arithmetic is float32, as Caffe's
``(pixel - mean) * scale``. That arithmetic is elementwise, so ``prepare`` does it
on the whole image (where a prefetch thread may run it) and ``batch`` then draws
and applies the crops and flips, in order, on the caller's thread.

Random draws use torch's global generator (Caffe's ``rng() % n`` becomes a
uniform ``torch.randint``): the Solver seeds it with ``random_seed`` and saves
and restores its state in snapshots, so seeded runs repeat and resume
bit-identically.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.blob_proto import read_blob_proto
from fcnwild.base.errors import DatasetError, NetError
from fcnwild.data.caffe_io import datum_array
from fcnwild.layers.base import TRAIN, find_input

log = logging.getLogger("fcnwild.layers")
# Fields of a layer's own *_param that Caffe ignores -> the transform_param field meant.
_LEGACY_FIELDS = {"scale": "scale", "mean_file": "mean_file", "crop_size": "crop_size",
                  "mirror": "mirror", "force_encoded_color": "force_color"}


@contextlib.contextmanager
def in_layer(layer: str) -> Iterator[None]:
    """Name ``layer`` in the DatasetErrors raised by the file readers inside."""
    try:
        yield
    except DatasetError as err:
        if err.layer is not None:
            raise
        raise DatasetError(err.detail, file=err.file, line=err.line, layer=layer) from None


def warn_legacy_fields(param, name: str, layer: str, *, used: tuple[str, ...] = ()) -> None:
    """Caffe ignores the transformation fields of a layer's own ``*_param`` ``name`` (only
    the V1 upgrade moves them to ``transform_param``); say so rather than ignore them
    silently."""
    for field, meant in _LEGACY_FIELDS.items():
        if field not in used and field in param.DESCRIPTOR.fields_by_name and \
                param.HasField(field):
            log.warning("layer '%s': %s.%s is ignored, as in Caffe; set "
                        "transform_param.%s instead", layer, name, field, meant)


def caffe_rand(n: int) -> int:
    """Caffe's ``Rand(n)``: uniform in [0, n)."""
    return int(torch.randint(n, ()))


class DataTransformer:
    """``transform_param`` of layer ``layer``; ``base_dir`` resolves a relative mean_file."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int, *, layer: str,
                 base_dir: Path | None, source: str | None = None) -> None:
        self.layer, self.source = layer, source
        self.phase = phase
        self.scale = np.float32(param.scale)
        self.mirror = param.mirror
        self.crop_size = param.crop_size
        self.force_color, self.force_gray = param.force_color, param.force_gray
        if param.HasField("mean_file") and len(param.mean_value):
            raise self._error("cannot specify mean_file and mean_value at the same time")
        self.mean_image: np.ndarray | None = None
        if param.HasField("mean_file"):
            path = find_input(param.mean_file, base_dir, "mean_file", layer)
            mean = read_blob_proto(path)
            if mean.ndim != 4 or mean.shape[0] != 1:
                raise DatasetError(f"the mean is a blob of shape {mean.shape}; expected "
                                   "(1, channels, height, width)", file=path, layer=layer)
            self.mean_image = mean[0]
        self.mean_values = np.asarray(param.mean_value, np.float32)

    def _error(self, message: str) -> NetError:
        return NetError(message, layer=self.layer, file=self.source)

    def decode(self, datum: caffe_pb2.Datum, where: str) -> np.ndarray:
        """A Datum's image (C, H, W); ``force_color``/``force_gray`` apply to encoded ones."""
        if datum.encoded and self.force_color and self.force_gray:
            raise self._error("cannot set both force_color and force_gray")
        color = True if self.force_color else False if self.force_gray else None
        return datum_array(datum, where, color=color)

    def prepare_datum(self, datum: caffe_pb2.Datum, where: str) -> np.ndarray:
        """``prepare`` of a Datum's decoded image."""
        return self.prepare(self.decode(datum, where), where)

    def output_shape(self, image_shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
        """Caffe's InferBlobShape for one (C, H, W) image: the crop replaces H and W."""
        channels, height, width = image_shape
        if self.crop_size and (height < self.crop_size or width < self.crop_size):
            raise DatasetError(f"image of {height}x{width} is smaller than crop_size "
                               f"{self.crop_size}", file=where, layer=self.layer)
        if self.crop_size:
            return channels, self.crop_size, self.crop_size
        return channels, height, width

    def __call__(self, image: np.ndarray, where: str) -> np.ndarray:
        """Transform one (C, H, W) image (uint8 or float32) into a float32 (C, h, w) array;
        ``where`` names the file or record in errors."""
        return self.batch([self.prepare(image, where)])[0]

    def prepare(self, image: np.ndarray, where: str) -> np.ndarray:
        """``(pixel - mean) * scale`` over the whole (C, H, W) image, as float32: the part of
        the transform that draws nothing (elementwise, so the same as after the crop)."""
        self._check_mean(image.shape, where)
        self.output_shape(image.shape, where)
        out = image.astype(np.float32)
        if self.mean_image is not None:
            out -= self.mean_image
        elif self.mean_values.size:
            out -= self.channel_means(image.shape[0])[:, None, None]
        if self.scale != 1:
            out *= self.scale
        return out

    def batch(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Crop and flip prepared images of one shape, drawing in order, into a
        float32 (N, C, h, w) batch."""
        windows = [self._window(image.shape) for image in prepared]
        return np.stack([image[crop][:, :, ::-1] if mirror else image[crop]
                         for image, (crop, mirror) in zip(prepared, windows)])

    def _window(self, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], bool]:
        """Draw one image's mirror flip, then its crop (Caffe's order): the crop's slices."""
        _, height, width = shape
        do_mirror = self.mirror and caffe_rand(2) == 1
        h_off = w_off = 0
        out_h, out_w = height, width
        if self.crop_size:
            out_h = out_w = self.crop_size
            if self.phase == TRAIN:
                h_off = caffe_rand(height - self.crop_size + 1)
                w_off = caffe_rand(width - self.crop_size + 1)
            else:
                h_off = (height - self.crop_size) // 2
                w_off = (width - self.crop_size) // 2
        return (slice(None), slice(h_off, h_off + out_h), slice(w_off, w_off + out_w)), do_mirror

    def channel_means(self, channels: int) -> np.ndarray:
        """``mean_value`` per channel (one value is used for every channel)."""
        if self.mean_values.size not in (1, channels):
            raise self._error(f"{self.mean_values.size} mean_value(s) for {channels}-channel "
                              "images; give one, or one per channel")
        return np.broadcast_to(self.mean_values, (channels,))

    def _check_mean(self, shape: tuple[int, ...], where: str) -> None:
        if self.mean_image is not None and self.mean_image.shape != tuple(shape):
            raise DatasetError(f"the mean_file's mean is {self.mean_image.shape} (C, H, W); "
                               f"this image is {tuple(shape)}: the mean must be as large as "
                               "the uncropped image", file=where, layer=self.layer)
