"""WindowData: Caffe's WindowDataLayer, R-CNN style windows cut from images and warped.

The window file repeats, per image::

    # <image index>            (0, 1, 2, ... in order)
    <image path>               (root_folder + path)
    <channels> <height> <width>
    <number of windows>
    <class> <overlap> <x1> <y1> <x2> <y2>     (one line per window, inclusive pixels)

Windows with ``overlap >= fg_threshold`` are foreground (their class must be
> 0), those with ``overlap < bg_threshold`` background (class forced to 0), the
rest are dropped. Every batch holds ``batch_size - int(batch_size * fg_fraction)``
background windows then the foreground ones, each drawn uniformly (in any phase).
A window is widened by ``context_pad`` (and made square in ``crop_mode:
"square"``), clipped to the image, warped with INTER_LINEAR into its share of
the ``crop_size`` square, optionally mirrored, and written as
``(pixel - mean) * window_data_param.scale``; the part of the square outside
the image stays 0. ``transform_param`` gives crop_size (required), mirror and the
mean (``mean_file``: a mean image whose centre ``crop_size`` square is used, or
``mean_value``); its ``scale`` is not used. Window geometry is computed in float32
with C's round-half-away-from-zero, as Caffe computes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from fcnwild.base.errors import DatasetError
from fcnwild.data.caffe_io import decode_image, resize
from fcnwild.layers.base import Shape, find_input
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.data_transformer import (
    DataTransformer,
    caffe_rand,
    in_layer,
    warn_legacy_fields,
)
from fcnwild.layers.registry import register

_F32 = np.float32


@dataclass(frozen=True)
class Window:
    image: int          # index into the layer's image list
    label: int
    x1: int
    y1: int
    x2: int
    y2: int
    line: int           # where the window file gives it


def _round(value: np.float32) -> int:
    """C's ``round``: halves away from zero."""
    return int(np.sign(value) * np.floor(np.abs(np.float64(value)) + 0.5))


class _Tokens:
    """The window file read as whitespace-separated fields (C++ ``>>``), with line numbers."""

    def __init__(self, path: Path, layer: str) -> None:
        self.path, self.layer = path, layer
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read the window file ({err})", file=path,
                               layer=layer) from None
        self._tokens = [(token, number) for number, line in enumerate(text.splitlines(), 1)
                        for token in line.split()]
        self._next = 0
        self.line = 0

    def take(self, what: str, kind: type = str):
        if self.at_end():
            raise self.error(f"the file ends where {what} was expected")
        token, self.line = self._tokens[self._next]
        self._next += 1
        try:
            return kind(token)
        except ValueError:
            raise self.error(f"expected {what} ({kind.__name__}), found {token!r}") from None

    def at_end(self) -> bool:
        return self._next == len(self._tokens)

    def error(self, message: str) -> DatasetError:
        return DatasetError(message, file=self.path, line=self.line or None, layer=self.layer)


@register("WindowData")
class WindowData(_DataLayer):
    num_tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.window_data_param
        self.check_source_and_batch("window_data_param")
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode {p.crop_mode!r}: expected \"warp\" or \"square\"")
        warn_legacy_fields(p, "window_data_param", self.name, used=("scale",))
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           layer=self.name, base_dir=self.ctx.base_dir,
                                           source=self.ctx.source)
        self.crop_size = self.transformer.crop_size
        if self.crop_size == 0:
            raise self.error("WindowData needs transform_param.crop_size > 0")
        if 2 * p.context_pad >= self.crop_size:
            raise self.error(f"context_pad {p.context_pad} leaves nothing of a "
                             f"{self.crop_size}-pixel crop")
        self.batch_size = p.batch_size
        self.window_file = find_input(p.source, self.ctx.base_dir, "window file", self.name)
        self.images: list[Path] = []
        self.foreground: list[Window] = []
        self.background: list[Window] = []
        self._read_windows()
        self.num_fg = int(_F32(self.batch_size) * _F32(p.fg_fraction))
        for count, windows, kind in ((self.num_fg, self.foreground, "foreground"),
                                     (self.batch_size - self.num_fg, self.background,
                                      "background")):
            if count and not windows:
                raise DatasetError(f"a batch takes {count} {kind} window(s), but the file has "
                                   f"none (fg_threshold {p.fg_threshold}, bg_threshold "
                                   f"{p.bg_threshold})", file=self.window_file, layer=self.name)
        self.cache = [self._read_bytes(i) for i in range(len(self.images))] \
            if p.cache_images else None
        self.mean = self._crop_mean()

    def _read_windows(self) -> None:
        p = self.param.window_data_param
        tokens = _Tokens(self.window_file, self.name)
        if tokens.at_end():
            raise DatasetError("the window file is empty", file=self.window_file,
                               layer=self.name)
        while not tokens.at_end():
            if tokens.take("'#'") != "#":
                raise tokens.error("expected '#' starting an image's entry")
            index = tokens.take("the image index", int)
            if index != len(self.images):
                raise tokens.error(f"image index {index}; the entries must be numbered 0, "
                                   f"1, 2, ... in order (expected {len(self.images)})")
            path = tokens.take("the image path")
            with in_layer(self.name):
                self.images.append(find_input(p.root_folder + path, self.ctx.base_dir,
                                              f"image of entry {index} of {self.window_file}",
                                              self.name))
            channels = tokens.take("the image's channels", int)
            if channels != 3:
                raise tokens.error(f"{channels} channels; WindowData reads colour images "
                                   "(3 channels)")
            for what in ("height", "width"):
                tokens.take(f"the image's {what}", int)
            for _ in range(tokens.take("the number of windows", int)):
                label = tokens.take("a window's class", int)
                overlap = _F32(tokens.take("a window's overlap", float))
                x1, y1, x2, y2 = (tokens.take(f"a window's {c}", int)
                                  for c in ("x1", "y1", "x2", "y2"))
                if x2 < x1 or y2 < y1:
                    raise tokens.error(f"window ({x1}, {y1}, {x2}, {y2}) is empty")
                if overlap >= _F32(p.fg_threshold):
                    if label <= 0:
                        raise tokens.error(f"foreground window (overlap {overlap}) of class "
                                           f"{label}; foreground classes must be > 0")
                    self.foreground.append(Window(index, label, x1, y1, x2, y2, tokens.line))
                elif overlap < _F32(p.bg_threshold):
                    self.background.append(Window(index, 0, x1, y1, x2, y2, tokens.line))

    def _read_bytes(self, index: int) -> bytes:
        try:
            return self.images[index].read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read image ({err.strerror or err})",
                               file=self.images[index], layer=self.name) from None

    def _crop_mean(self) -> np.ndarray:
        """The (3, crop, crop) mean under the crop square (0 when there is no mean)."""
        mean_image = self.transformer.mean_image
        crop = self.crop_size
        if mean_image is None:
            return np.broadcast_to(self.transformer.channel_means(3)[:, None, None]
                                   if self.transformer.mean_values.size else _F32(0),
                                   (3, crop, crop))
        channels, height, width = mean_image.shape
        # Caffe offsets both axes by (mean width - crop) / 2.
        off = (width - crop) // 2
        if channels != 3 or off < 0 or off + crop > height:
            raise self.error(f"the mean_file's mean is {mean_image.shape} (C, H, W); "
                             f"WindowData needs 3 channels and its centre {crop}x{crop} "
                             "square")
        return mean_image[:, off:off + crop, off:off + crop]

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size, 3, self.crop_size, self.crop_size), (self.batch_size,)]

    def forward(self) -> tuple[Tensor, ...]:
        p = self.param.window_data_param
        crop = self.crop_size
        data = np.zeros((self.batch_size, 3, crop, crop), _F32)
        labels = np.empty(self.batch_size, _F32)
        windows = [self.background] * (self.batch_size - self.num_fg) + \
            [self.foreground] * self.num_fg
        scale = _F32(p.scale)
        for item, pool in enumerate(windows):
            window = pool[caffe_rand(len(pool))]
            mirror = self.transformer.mirror and caffe_rand(2) == 1
            patch, top, left = self._warp(window, mirror)
            height, width = patch.shape[1:]
            region = (slice(None), slice(top, top + height), slice(left, left + width))
            data[item][region] = (patch - self.mean[region]) * scale
            labels[item] = window.label
        return (self._like_net(torch.from_numpy(data)),
                self._like_net(torch.from_numpy(labels)))

    def _image(self, index: int) -> np.ndarray:
        data = self.cache[index] if self.cache is not None else self._read_bytes(index)
        with in_layer(self.name):
            return decode_image(data, cv2.IMREAD_COLOR, self.images[index])

    def _warp(self, window: Window, mirror: bool) -> tuple[np.ndarray, int, int]:
        """The window's warped (3, h, w) float32 pixels and where they go in the crop square."""
        p = self.param.window_data_param
        image = self._image(window.image)
        rows, cols = image.shape[1:]
        crop = self.crop_size
        x1, y1, x2, y2 = window.x1, window.y1, window.x2, window.y2
        out_w = out_h = crop
        pad_w = pad_h = 0
        if p.context_pad > 0 or p.crop_mode == "square":
            context_scale = _F32(crop) / _F32(crop - 2 * p.context_pad)
            half_h, half_w = _F32((y2 - y1 + 1) / 2), _F32((x2 - x1 + 1) / 2)
            center_x, center_y = _F32(x1) + half_w, _F32(y1) + half_h
            if p.crop_mode == "square":
                half_h = half_w = max(half_h, half_w)
            x1, x2 = (_round(center_x - half_w * context_scale),
                      _round(center_x + half_w * context_scale))
            y1, y2 = (_round(center_y - half_h * context_scale),
                      _round(center_y + half_h * context_scale))
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = _F32(crop) / _F32(unclipped_w), _F32(crop) / _F32(unclipped_h)
            out_w = _round(_F32(x2 - x1 + 1) * scale_x)
            out_h = _round(_F32(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _round(_F32(pad_x1) * scale_x), _round(_F32(pad_x2) * scale_x)
            pad_h = _round(_F32(pad_y1) * scale_y)
            pad_w = pad_x2 if mirror else pad_x1      # the padding is mirrored too
            out_h, out_w = min(out_h, crop - pad_h), min(out_w, crop - pad_w)
        if x1 < 0 or y1 < 0 or x2 >= cols or y2 >= rows or x1 > x2 or y1 > y2 or \
                out_h <= 0 or out_w <= 0:
            raise DatasetError(f"window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) "
                               f"does not fit its {cols}x{rows} image "
                               f"{self.images[window.image]}", file=self.window_file,
                               line=window.line, layer=self.name)
        patch = resize(image[:, y1:y2 + 1, x1:x2 + 1], out_h, out_w)
        if mirror:
            patch = patch[:, :, ::-1]
        return patch.astype(_F32), pad_h, pad_w
