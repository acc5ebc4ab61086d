"""Normalization layers: BatchNorm, Scale, Bias, LRN, MVN."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import TEST, Layer, LayerContext, Shape
from fcnwild.layers.fillers import constant_filler, fill
from fcnwild.layers.registry import register


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm (no affine part: follow it with Scale).

    Blobs: [mean * f, variance * f, f] with f the running scale factor; the
    statistics in use are blob / f (0 when f is 0). With batch statistics
    (default in TRAIN), every forward normalises by the biased batch variance
    and updates the blobs: f = maf * f + 1, mean_blob = mean + maf * mean_blob,
    var_blob = m/(m-1) * var + maf * var_blob (m = elements per channel). The
    blobs are never learnable: their ParamSpecs get lr_mult 0, as Caffe does.
    """

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        own = caffe_pb2.LayerParameter()
        own.CopyFrom(param)
        for i, spec in enumerate(own.param):
            if spec.lr_mult != 0:
                raise self.error(f"param {i} has lr_mult {spec.lr_mult}: the batch "
                                 "normalization statistics cannot be learnable (lr_mult 0)")
        if len(own.param) > 3:
            raise self.error(f"{len(own.param)} param specs for 3 statistics blobs")
        while len(own.param) < 3:
            own.param.add().lr_mult = 0.0
        self.param = own

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.batch_norm_param
        shape = tuple(bottom_shapes[0])
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == TEST)
        self.moving_average_fraction, self.eps = p.moving_average_fraction, p.eps
        self.channels = 1 if len(shape) == 1 else shape[1]
        for size in (self.channels, self.channels, 1):
            self.add_blob(torch.zeros(size))
            self.blobs[-1].requires_grad_(False)    # statistics: never learned, never a diff

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) > 1 and shape[1] != self.channels:
            raise self.error(f"bottom {shape_str(shape)} has {shape[1]} channels; the "
                             f"statistics have {self.channels}")
        return [shape]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        self.reshape([x.shape])
        flat = x.reshape(x.shape[0], self.channels, -1)
        mean_blob, var_blob, factor_blob = self.blobs
        if self.use_global_stats:
            f = factor_blob[0]
            scale = torch.where(f == 0, torch.zeros_like(f), 1 / f)
            mean, var = mean_blob * scale, var_blob * scale
        else:
            mean = flat.mean(dim=(0, 2))
            centred = flat - mean[None, :, None]
            var = (centred * centred).mean(dim=(0, 2))
            self._update_statistics(mean.detach(), var.detach(), flat.shape[0] * flat.shape[2])
        y = (flat - mean[None, :, None]) / torch.sqrt(var + self.eps)[None, :, None]
        return (y.reshape(x.shape),)

    @torch.no_grad()
    def _update_statistics(self, mean: Tensor, var: Tensor, m: int) -> None:
        mean_blob, var_blob, factor_blob = self.blobs
        maf = self.moving_average_fraction
        factor_blob.mul_(maf).add_(1)
        mean_blob.mul_(maf).add_(mean.to(mean_blob.dtype))
        correction = m / (m - 1) if m > 1 else 1.0
        var_blob.mul_(maf).add_(var.to(var_blob.dtype) * correction)


class _AffineBase(Layer):
    """Shared by Scale and Bias: a per-element operand spanning bottom 0's axes
    [axis, axis + its own axes), learned (one bottom) or given (bottom 1)."""
    num_bottoms = (1, 2)
    operand_param = ""       # "scale_param" / "bias_param"

    def _make_operand(self, bottom_shape: Shape, num_axes: int,
                      filler: caffe_pb2.FillerParameter) -> Tensor:
        p = getattr(self.param, self.operand_param)
        axis = canonical_axis(p.axis, len(bottom_shape), self.error)
        if num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {num_axes}")
        if num_axes >= 0 and len(bottom_shape) < axis + num_axes:
            raise self.error(f"the operand's shape extends past bottom {shape_str(bottom_shape)} "
                             f"when applied from axis {axis} over {num_axes} axes")
        end = len(bottom_shape) if num_axes == -1 else axis + num_axes
        shape = tuple(bottom_shape[axis:end])
        return fill(filler, shape or (1,), self.error).reshape(shape)

    def _broadcast_shape(self, bottom: Sequence[int], operand: Sequence[int]) -> tuple[int, ...]:
        """The operand viewed to broadcast against bottom 0 (Caffe's outer/dim/inner)."""
        if len(operand) == 0:
            return (1,) * len(bottom)
        axis = canonical_axis(getattr(self.param, self.operand_param).axis, len(bottom),
                              self.error)
        if len(bottom) < axis + len(operand) or \
                tuple(bottom[axis:axis + len(operand)]) != tuple(operand):
            raise self.error(f"operand shape {shape_str(operand)} does not match bottom "
                             f"{shape_str(bottom)} from axis {axis}")
        return (1,) * axis + tuple(operand) + (1,) * (len(bottom) - axis - len(operand))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        operand = bottom_shapes[1] if len(bottom_shapes) > 1 else self.blobs[0].shape
        self._broadcast_shape(bottom_shapes[0], operand)
        return [tuple(bottom_shapes[0])]


@register("Scale")
class Scale(_AffineBase):
    """y = x * gamma (+ beta): gamma learned (blob 0, filler default 1) or bottom 1;
    with bias_term, beta is the next blob (filler ``bias_filler``, default 0)."""
    operand_param = "scale_param"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.scale_param
        bottom = tuple(bottom_shapes[0])
        self.learned_scale = len(bottom_shapes) == 1
        if self.learned_scale:
            filler = p.filler if p.HasField("filler") else constant_filler(1.0)
            self.add_blob(self._make_operand(bottom, p.num_axes, filler))
        if p.bias_term:
            # Caffe's internal Bias layer spans bottom 1's axes in the two-bottom form.
            num_axes = len(bottom_shapes[1]) if len(bottom_shapes) > 1 else p.num_axes
            self.add_blob(self._make_operand(bottom, num_axes, p.bias_filler))

    def forward(self, x: Tensor, *scale: Tensor) -> tuple[Tensor]:
        gamma = self.blobs[0] if self.learned_scale else scale[0]
        y = x * gamma.reshape(self._broadcast_shape(x.shape, gamma.shape))
        beta = self.blob(1 if self.learned_scale else 0)
        if beta is not None:
            y = y + beta.reshape(self._broadcast_shape(x.shape, beta.shape))
        return (y,)


@register("Bias")
class Bias(_AffineBase):
    """y = x + b: b learned (blob 0, filler default 0) or bottom 1."""
    operand_param = "bias_param"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.bias_param
        if len(bottom_shapes) == 1:
            self.add_blob(self._make_operand(tuple(bottom_shapes[0]), p.num_axes, p.filler))

    def forward(self, x: Tensor, *bias: Tensor) -> tuple[Tensor]:
        b = bias[0] if bias else self.blobs[0]
        return (x + b.reshape(self._broadcast_shape(x.shape, b.shape)),)


LRNParameter = caffe_pb2.LRNParameter


@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x * s^-beta, with
    ACROSS_CHANNELS: s = k + alpha/n * sum of x^2 over n neighbouring channels;
    WITHIN_CHANNEL: s = 1 + alpha/n^2 * sum of x^2 over an n x n window (zero
    padded; Caffe builds it from AVE pooling and Power, so ``k`` is unused)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error(f"LRN only supports odd local_size, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = p.norm_region

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise self.error(f"LRN needs a 4-axis (N, C, H, W) bottom, got {shape_str(shape)}")
        return [shape]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        self.reshape([x.shape])
        pad = (self.size - 1) // 2
        square = x * x
        if self.region == LRNParameter.ACROSS_CHANNELS:
            window_mean = F.avg_pool3d(square[:, None], (self.size, 1, 1), stride=1,
                                       padding=(pad, 0, 0))[:, 0]
            scale = self.k + self.alpha * window_mean
        else:
            window_mean = F.avg_pool2d(square, self.size, stride=1, padding=pad)
            scale = 1 + self.alpha * window_mean
        return (x * torch.pow(scale, -self.beta),)


class _MVNFunction(torch.autograd.Function):
    """MVN with variance normalisation on (num, dim) rows: y = (x - mean) / (std + eps).
    Caffe's backward, dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps), is the
    analytic gradient only for eps = 0 (it drops a factor (std + eps) / std)."""

    @staticmethod
    def forward(ctx, rows: Tensor, eps: float) -> Tensor:
        centred = rows - rows.mean(dim=1, keepdim=True)
        denom = torch.sqrt((centred * centred).mean(dim=1, keepdim=True)) + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        y, denom = ctx.saved_tensors
        dx = dy - dy.mean(dim=1, keepdim=True) - y * (dy * y).mean(dim=1, keepdim=True)
        return dx / denom, None


@register("MVN")
class MVN(Layer):
    """Mean(-variance) normalisation per (N, C) plane, or per item across channels."""

    def forward(self, x: Tensor) -> tuple[Tensor]:
        p = self.param.mvn_param
        num = x.shape[0] if p.across_channels else count(x.shape[:2])
        rows = x.reshape(num, -1)
        if p.normalize_variance:
            y = _MVNFunction.apply(rows, p.eps)
        else:
            y = rows - rows.mean(dim=1, keepdim=True)
        return (y.reshape(x.shape),)
