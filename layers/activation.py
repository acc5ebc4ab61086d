"""Elementwise activation layers (Caffe's NeuronLayer family).

Torch's autograd already computes Caffe's gradients for all of these,
including the kinks (ReLU and PReLU at 0 use the negative slope, AbsVal
sign(0) = 0, Clip passes the gradient at both bounds), except Power, whose
Caffe backward is formula-based with special cases and is a custom Function.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fcnwild.layers.axes import shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.fillers import constant_filler, fill
from fcnwild.layers.registry import register


@register("ReLU")
class ReLU(Layer):
    """y = max(x, 0) + negative_slope * min(x, 0); may run in place (top == bottom)."""
    supports_inplace = True

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.negative_slope = self.param.relu_param.negative_slope
        self._inplace_top: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor]:
        if self.negative_slope == 0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.negative_slope),)

    def forward_inplace(self, x: Tensor) -> None:
        if self.negative_slope == 0:
            x.clamp_(min=0)
        else:
            F.leaky_relu_(x, self.negative_slope)
        # Caffe's in-place backward reads the overwritten blob; keep that same tensor.
        self._inplace_top = x

    def backward_inplace(self, grad: Tensor) -> None:
        top, self._inplace_top = self._inplace_top, None
        if top is None:
            raise self.error("in-place backward needs an in-place forward first")
        # Caffe's in-place backward tests the output, top > 0, even for a negative slope.
        # torch's fused backward kernels do the same test and write the diff in one pass.
        if self.negative_slope == 0:
            torch.ops.aten.threshold_backward.grad_input(grad, top, 0, grad_input=grad)
        else:
            torch.ops.aten.leaky_relu_backward.grad_input(grad, top, self.negative_slope, False,
                                                         grad_input=grad)


@register("PReLU")
class PReLU(Layer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.prelu_param
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise self.error(f"PReLU needs a bottom with >= 2 axes, got {shape_str(shape)}")
        self.channel_shared = p.channel_shared
        self.channels = shape[1]
        # Caffe: a shared slope is a 0-axis blob, else one value per channel.
        slope_shape = () if self.channel_shared else (self.channels,)
        filler = p.filler if p.HasField("filler") else constant_filler(0.25)
        self.add_blob(fill(filler, slope_shape or (1,), self.error).reshape(slope_shape))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2 or (not self.channel_shared and shape[1] != self.channels):
            raise self.error(f"bottom {shape_str(shape)} does not fit {self.channels} slopes")
        return [shape]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        slope = self.blobs[0] if self.channel_shared else \
            self.blobs[0].reshape((1, -1) + (1,) * (x.dim() - 2))
        return (torch.where(x > 0, x, slope * x),)


@register("Sigmoid")
class Sigmoid(Layer):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (torch.sigmoid(x),)


@register("TanH")
class TanH(Layer):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (torch.tanh(x),)


@register("AbsVal")
class AbsVal(Layer):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (torch.abs(x),)


class _PowerFunction(torch.autograd.Function):
    """Caffe's PowerLayer: y = (shift + scale * x) ^ power with its backward formulas.

    Caffe computes dy/dx from y where it can (power * y / x when shift is 0,
    diff_scale * y / (shift + scale * x) otherwise), so at a zero base its
    gradient is NaN/Inf where the analytic one would be finite; and when
    power * scale is 0 the output is a constant with zero gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, power: float, scale: float, shift: float) -> Tensor:
        ctx.power, ctx.scale, ctx.shift = power, scale, shift
        diff_scale = power * scale
        if diff_scale == 0:
            value = 1.0 if power == 0 else math.pow(shift, power)
            ctx.save_for_backward(x, x)
            return torch.full_like(x, value)
        y = x
        if scale != 1:
            y = y * scale
        if shift != 0:
            y = y + shift
        if power != 1:
            y = torch.pow(y, power)
        elif y is x:
            y = x.clone()
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, y = ctx.saved_tensors
        power, scale, shift = ctx.power, ctx.scale, ctx.shift
        diff_scale = power * scale
        if diff_scale == 0 or power == 1:
            dx = dy * diff_scale
        elif power == 2:
            dx = x * (diff_scale * scale)
            if shift != 0:
                dx = dx + diff_scale * shift
            dx = dx * dy
        elif shift == 0:
            dx = y / x * power * dy
        else:
            base = x * scale if scale != 1 else x
            dx = y / (base + shift)
            if diff_scale != 1:
                dx = dx * diff_scale
            dx = dx * dy
        return dx, None, None, None


@register("Power")
class Power(Layer):
    """y = (shift + scale * x) ^ power, with Caffe's backward (see _PowerFunction)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (_PowerFunction.apply(x, self.power, self.scale, self.shift),)


def _log_base(layer: Layer, base: float) -> float:
    """Caffe's Exp/Log base: -1 means e; otherwise it must be > 0 with a finite log."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(Layer):
    """y = base ^ (shift + scale * x), computed as Caffe does:
    outer * exp(inner * x) with inner = ln(base) * scale, outer = base ^ shift."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.exp_param
        log_base = _log_base(self, p.base)
        self.inner_scale = log_base * p.scale
        if p.shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(p.shift) if p.base == -1 else math.pow(p.base, p.shift)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return (y if self.outer_scale == 1 else y * self.outer_scale,)


@register("Log")
class Log(Layer):
    """y = log_base(shift + scale * x); base -1 means e."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.log_param
        log_base = _log_base(self, p.base)
        if log_base == 0:
            raise self.error("base 1 has no logarithm (1 / log(base) is infinite)")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = p.scale, p.shift

    def forward(self, x: Tensor) -> tuple[Tensor]:
        inner = x * self.scale if self.scale != 1 else x
        inner = inner + self.shift if self.shift != 0 else inner
        y = torch.log(inner)
        return (y if self.base_scale == 1 else y * self.base_scale,)


@register("BNLL")
class BNLL(Layer):
    """y = log(1 + exp(x)); Caffe caps the exponent of its gradient at 50."""

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (F.softplus(x, beta=1.0, threshold=50.0),)


@register("ELU")
class ELU(Layer):
    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.alpha = self.param.elu_param.alpha

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (F.elu(x, self.alpha),)


@register("Threshold")
class Threshold(Layer):
    """y = 1 if x > threshold else 0; Caffe has no backward for it."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.threshold = self.param.threshold_param.threshold

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return ((x.detach() > self.threshold).to(x.dtype),)


@register("Clip")
class Clip(Layer):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs both min and max")
        if p.min > p.max:
            raise self.error(f"clip_param min {p.min} is greater than max {p.max}")
        self.min, self.max = p.min, p.max

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (torch.clamp(x, self.min, self.max),)


@register("Swish")
class Swish(Layer):
    """y = x * sigmoid(beta * x)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.beta = self.param.swish_param.beta

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (x * torch.sigmoid(self.beta * x),)
