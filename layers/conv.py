"""Convolution and Deconvolution (Caffe's BaseConvolutionLayer family).

Both read every ConvolutionParameter field: ``num_output``, ``bias_term``,
``kernel_size``/``stride``/``pad``/``dilation`` (once, or once per spatial
axis) or their 2-D ``_h``/``_w`` forms, ``group`` and ``axis`` (the channel
axis; every axis before it is batch). ``force_nd_im2col`` and ``engine`` only
choose Caffe's implementation and are ignored. One to three spatial axes are
supported (torch's convolutions). Several bottoms of one shape give as many
tops, computed with the same weights, as in Caffe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, LayerContext, Shape
from fcnwild.layers.conv_ops import convolution, deconvolution
from fcnwild.layers.fillers import ErrorFactory, fill
from fcnwild.layers.registry import register


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    def extent(self, i: int) -> int:
        return self.dilation[i] * (self.kernel[i] - 1) + 1

    def output_size(self, i: int, size: int, error: ErrorFactory,
                    transposed: bool = False) -> int:
        """Spatial axis ``i`` of the output: convolution (and im2col) floor, or the
        transposed convolution's ``stride * (size - 1) + extent - 2 * pad``."""
        if transposed:
            out = self.stride[i] * (size - 1) + self.extent(i) - 2 * self.pad[i]
        else:
            span = size + 2 * self.pad[i] - self.extent(i)
            out = span // self.stride[i] + 1 if span >= 0 else 0
        if out <= 0:
            raise error(f"spatial axis {i} of size {size} gives no output with kernel "
                        f"{self.kernel[i]}, dilation {self.dilation[i]}, stride "
                        f"{self.stride[i]}, pad {self.pad[i]}")
        return out


class _ConvolutionBase(Layer):
    num_bottoms = (1, None)
    num_tops = (1, None)
    transposed = False

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        if len(param.bottom) != len(param.top):
            raise self.error(f"{self.type_name} needs as many tops as bottoms, got "
                             f"{len(param.bottom)} bottoms and {len(param.top)} tops")

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.convolution_param
        shape = tuple(bottom_shapes[0])
        self.channel_axis = canonical_axis(p.axis, len(shape), self.error)
        num_spatial = len(shape) - self.channel_axis - 1
        if not 1 <= num_spatial <= 3:
            raise self.error(f"{self.type_name} supports 1 to 3 spatial axes; bottom "
                             f"{shape_str(shape)} with channel axis {self.channel_axis} has "
                             f"{num_spatial}")
        self.geometry = read_conv_geometry(self, num_spatial)
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error(f"{self.type_name} needs num_output > 0")
        channels, self.num_output, self.group = shape[self.channel_axis], p.num_output, p.group
        if self.group == 0:
            raise self.error("group must be > 0")
        if channels % self.group:
            raise self.error(f"{channels} input channels are not divisible by group {self.group}")
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not a multiple of group "
                             f"{self.group}")
        self.channels = channels
        if self.transposed:   # Caffe's reverse_dimensions: (C_in, C_out/group, *kernel)
            weight_shape = (channels, self.num_output // self.group) + self.geometry.kernel
        else:
            weight_shape = (self.num_output, channels // self.group) + self.geometry.kernel
        self.add_blob(fill(p.weight_filler, weight_shape, self.error))
        if p.bias_term:
            self.add_blob(fill(p.bias_filler, (self.num_output,), self.error))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if tuple(shape) != first:
                raise self.error(f"all bottoms must have one shape: bottom 0 is "
                                 f"{shape_str(first)}, bottom {i} is {shape_str(shape)}")
        if len(first) != self.channel_axis + 1 + len(self.geometry.kernel):
            raise self.error(f"bottom {shape_str(first)} has {len(first)} axes; this layer "
                             f"was set up for {self.channel_axis + 1 + len(self.geometry.kernel)}")
        if first[self.channel_axis] != self.channels:
            raise self.error(f"bottom has {first[self.channel_axis]} channels; the weights "
                             f"expect {self.channels}")
        spatial = first[self.channel_axis + 1:]
        out = tuple(self.geometry.output_size(i, d, self.error, self.transposed)
                    for i, d in enumerate(spatial))
        top = first[:self.channel_axis] + (self.num_output,) + out
        return [top] * len(bottom_shapes)

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:
        op = deconvolution if self.transposed else convolution
        g = self.geometry
        tops = []
        for x in bottoms:
            if self.channel_axis == 1:
                # The bottom itself, not a view of it: the kernels look for memory the
                # Net parked on it (layers/buffers.py).
                tops.append(op(x, self.blobs[0], self.blob(1), g.stride, g.pad, g.dilation,
                               self.group))
                continue
            batch = x.shape[:self.channel_axis]
            x4 = x.reshape((count(batch),) + tuple(x.shape[self.channel_axis:]))
            y = op(x4, self.blobs[0], self.blob(1), g.stride, g.pad, g.dilation, self.group)
            tops.append(y.reshape(tuple(batch) + tuple(y.shape[1:])))
        return tuple(tops)


def read_conv_geometry(layer: Layer, num_spatial: int) -> ConvGeometry:
    """Kernel, stride, pad and dilation from ``layer``'s convolution_param, with Caffe's
    rules (once or once per spatial axis, or the 2-D ``_h``/``_w`` forms)."""
    p = layer.param.convolution_param

    def per_axis(name: str, repeated: Sequence[int], h_name: str, w_name: str,
                 default: int | None) -> tuple[int, ...]:
        has_hw = p.HasField(h_name) or p.HasField(w_name)
        if has_hw:
            if num_spatial != 2:
                raise layer.error(f"{h_name} & {w_name} can only be used for 2-D convolution")
            if len(repeated):
                raise layer.error(f"either {name} or {h_name}/{w_name} should be given, "
                                  "not both")
            if default is None and not (p.HasField(h_name) and p.HasField(w_name)):
                raise layer.error(f"{h_name} and {w_name} must both be given")
            return (getattr(p, h_name), getattr(p, w_name))
        n = len(repeated)
        if n == 0 and default is not None:
            return (default,) * num_spatial
        if n not in (1, num_spatial):
            raise layer.error(f"{name} must be given once, or once per spatial axis "
                              f"({name} given {n} times; {num_spatial} spatial axes)")
        return tuple(repeated[0 if n == 1 else i] for i in range(num_spatial))

    kernel = per_axis("kernel_size", p.kernel_size, "kernel_h", "kernel_w", None)
    stride = per_axis("stride", p.stride, "stride_h", "stride_w", 1)
    pad = per_axis("pad", p.pad, "pad_h", "pad_w", 0)
    n_dil = len(p.dilation)
    if n_dil not in (0, 1, num_spatial):
        raise layer.error(f"dilation must be given once, or once per spatial axis "
                          f"(given {n_dil} times; {num_spatial} spatial axes)")
    dilation = tuple(1 if n_dil == 0 else p.dilation[0 if n_dil == 1 else i]
                     for i in range(num_spatial))
    for name, values in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):
            raise layer.error(f"{name} must be > 0, got {values}")
    return ConvGeometry(kernel, stride, pad, dilation)


@register("Convolution")
class Convolution(_ConvolutionBase):
    """y = W * x + b; weights (C_out, C_in/group, *kernel); output size floors."""


@register("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """Transposed convolution; weights (C_in, C_out/group, *kernel);
    output size = stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad."""
    transposed = True
