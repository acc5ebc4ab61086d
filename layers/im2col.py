"""Im2col: the column matrix a convolution multiplies, as a layer.

Reads ``convolution_param`` like Convolution (kernel, stride, pad, dilation once or
per spatial axis, the 2-D ``_h``/``_w`` forms, ``axis``). The top is
(batch..., C * prod(kernel), *out) with channel index ``c * prod(kernel) + kernel
offset`` (row-major over the kernel axes: ``(c * kh + i) * kw + j`` in 2-D), out
sizes as a convolution's (floor). Backward is col2im: overlapping windows add.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.conv import ConvGeometry, read_conv_geometry
from fcnwild.layers.registry import register


@register("Im2col")
class Im2col(Layer):

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = tuple(bottom_shapes[0])
        self.channel_axis = canonical_axis(self.param.convolution_param.axis, len(shape),
                                           self.error)
        self.num_spatial = len(shape) - self.channel_axis - 1
        if self.num_spatial < 1:
            raise self.error(f"bottom {shape_str(shape)} has no spatial axis after channel "
                             f"axis {self.channel_axis}")
        self.geometry: ConvGeometry = read_conv_geometry(self, self.num_spatial)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) != self.channel_axis + 1 + self.num_spatial:
            raise self.error(f"bottom {shape_str(shape)} has {len(shape)} axes; this layer was "
                             f"set up for {self.channel_axis + 1 + self.num_spatial}")
        spatial = shape[self.channel_axis + 1:]
        out = tuple(self.geometry.output_size(i, d, self.error) for i, d in enumerate(spatial))
        channels = shape[self.channel_axis] * math.prod(self.geometry.kernel)
        return [shape[:self.channel_axis] + (channels,) + out]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        top = self.reshape([x.shape])[0]
        batch = count(x.shape, 0, self.channel_axis)
        images = x.reshape((batch,) + tuple(x.shape[self.channel_axis:]))
        g = self.geometry
        if self.num_spatial == 2:
            cols = F.unfold(images, g.kernel, g.dilation, g.pad, g.stride)
        else:
            cols = _strided_windows(images, g, top[self.channel_axis + 1:])
        return (cols.reshape(top),)


def _strided_windows(images: Tensor, g: ConvGeometry, out: Sequence[int]) -> Tensor:
    """im2col for any number of spatial axes: one strided slice of the zero-padded
    images per kernel offset, stacked after the channel axis."""
    widths = [p for pad in reversed(g.pad) for p in (pad, pad)]
    padded = F.pad(images, widths)
    windows = []
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        index = [slice(None), slice(None)]
        index += [slice(o * d, o * d + s * (n - 1) + 1, s)
                  for o, d, s, n in zip(offset, g.dilation, g.stride, out)]
        windows.append(padded[tuple(index)])
    return torch.stack(windows, dim=2)
