"""Pooling (MAX, AVE, STOCHASTIC) with Caffe's exact window arithmetic.

Caffe's rules (pooling_layer.cpp), which torch's pooling does not all share:

* output size = ceil((H + 2p - k) / s) + 1 (``round_mode: FLOOR`` floors);
  then, when there is padding, a last window that would start at or beyond
  ``H + p`` is dropped;
* padding may be as large as ``k - 1`` (torch refuses ``p > k/2``), so the
  input is padded explicitly (-inf for MAX, 0 for AVE) and pooled without
  implicit padding;
* MAX ignores padding; among equal maxima the first in row-major order wins;
  the optional second top holds that element's flat index ``h * W + w``;
* AVE divides by the window clipped to ``[-p, H + p)``: padded zeros count,
  the ceil overhang beyond the padding does not;
* STOCHASTIC (Caffe has it on GPU only) ignores ``pad``; TRAIN samples one
  element per window with probability proportional to its value, TEST returns
  sum(x^2) / sum(x).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from fcnwild.base import caffe_pb2
from fcnwild.layers import buffers
from fcnwild.layers.axes import shape_str
from fcnwild.layers.base import TRAIN, Layer, Shape
from fcnwild.layers.registry import register

FLT_MIN = 1.1754943508222875e-38
PoolingParameter = caffe_pb2.PoolingParameter


@register("Pooling")
class Pooling(Layer):
    num_tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.pooling_param
        self.method = p.pool
        self.global_pooling = p.global_pooling
        has_kernel = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if self.global_pooling:
            if has_kernel:
                raise self.error("with global_pooling: true the kernel size cannot be given")
            self.kernel: tuple[int, int] | None = None
        else:
            has_hw = p.HasField("kernel_h") or p.HasField("kernel_w")
            if p.HasField("kernel_size") and has_hw:
                raise self.error("give kernel_size, or kernel_h and kernel_w; not both")
            if not p.HasField("kernel_size") and not (p.HasField("kernel_h")
                                                      and p.HasField("kernel_w")):
                raise self.error("needs kernel_size, or both kernel_h and kernel_w")
            self.kernel = ((p.kernel_size, p.kernel_size) if p.HasField("kernel_size")
                           else (p.kernel_h, p.kernel_w))
            if min(self.kernel) <= 0:
                raise self.error(f"kernel size must be > 0, got {self.kernel}")
        self.pad = _pair(self, p, "pad", default=0)
        self.stride = _pair(self, p, "stride", default=1)
        if min(self.stride) <= 0:
            raise self.error(f"stride must be > 0, got {self.stride}")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true only pad 0 and stride 1 are allowed")
        if self.pad != (0, 0):
            if self.method == PoolingParameter.STOCHASTIC:
                raise self.error("padding is implemented only for MAX and AVE pooling")
            if self.kernel is not None and (self.pad[0] >= self.kernel[0]
                                            or self.pad[1] >= self.kernel[1]):
                raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if len(self.param.top) == 2 and self.method != PoolingParameter.MAX:
            raise self.error("a second (mask) top is only produced by MAX pooling")
        self.ceil = p.round_mode == PoolingParameter.CEIL

    # --- geometry ------------------------------------------------------------------------
    def _kernel(self, shape: Sequence[int]) -> tuple[int, int]:
        return (shape[2], shape[3]) if self.kernel is None else self.kernel

    def _geometry(self, shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        if len(shape) != 4:
            raise self.error(f"Pooling needs a 4-axis (N, C, H, W) bottom, got {shape_str(shape)}")
        kernel = self._kernel(shape)
        rounding = math.ceil if self.ceil else math.floor
        # Caffe clips both axes as soon as either pad is non-zero.
        clip = self.pad != (0, 0)
        out = []
        for size, k, s, p in zip(shape[2:], kernel, self.stride, self.pad):
            o = int(rounding((size + 2 * p - k) / s)) + 1
            if clip and (o - 1) * s >= size + p:
                o -= 1
            if o <= 0:
                raise self.error(f"bottom {shape_str(shape)} is too small for kernel {kernel}")
            out.append(o)
        return kernel, (out[0], out[1])

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        _, out = self._geometry(shape)
        return [shape[:2] + out] * len(self.param.top)

    # --- forward -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        kernel, out = self._geometry(x.shape)
        if self.method == PoolingParameter.MAX:
            return self._max(x, kernel, out)
        if self.method == PoolingParameter.AVE:
            return (self._ave(x, kernel, out),)
        return (self._stochastic(x, kernel, out),)

    def _padding(self, shape: Sequence[int], kernel: tuple[int, int],
                 out: tuple[int, int], pad: tuple[int, int]) -> tuple[int, int, int, int]:
        """F.pad widths (left, right, top, bottom) so that every window lies inside."""
        after = [max(0, (o - 1) * s + k - size - p)
                 for o, s, k, size, p in zip(out, self.stride, kernel, shape[2:], pad)]
        return (pad[1], after[1], pad[0], after[0])

    def _max(self, x: Tensor, kernel: tuple[int, int], out: tuple[int, int]) -> tuple[Tensor, ...]:
        widths = self._padding(x.shape, kernel, out, self.pad)
        padded = F.pad(x, widths, value=-math.inf) if any(widths) else x
        if len(self.param.top) == 1:
            if padded.device.type == "cpu":
                return (_MaxPool.apply(padded, kernel, self.stride)[..., :out[0], :out[1]],)
            return (F.max_pool2d(padded, kernel, self.stride)[..., :out[0], :out[1]],)
        y, index = F.max_pool2d(padded, kernel, self.stride, return_indices=True)
        y, index = y[..., :out[0], :out[1]], index[..., :out[0], :out[1]]
        if any(widths):   # flat index in the padded plane -> h * W + w in the bottom
            padded_w = padded.shape[3]
            h = torch.div(index, padded_w, rounding_mode="floor") - self.pad[0]
            w = index % padded_w - self.pad[1]
            index = h * x.shape[3] + w
        return y, index.to(x.dtype)

    def _ave(self, x: Tensor, kernel: tuple[int, int], out: tuple[int, int]) -> Tensor:
        widths = self._padding(x.shape, kernel, out, self.pad)
        padded = F.pad(x, widths) if any(widths) else x
        total = F.avg_pool2d(padded, kernel, self.stride, divisor_override=1)
        total = total[..., :out[0], :out[1]]
        return total / self._divisor(x.shape, kernel, out).to(x)

    def _divisor(self, shape: Sequence[int], kernel: tuple[int, int],
                 out: tuple[int, int]) -> Tensor:
        sizes = []
        for o, k, s, p, size in zip(out, kernel, self.stride, self.pad, shape[2:]):
            start = torch.arange(o) * s - p
            sizes.append(torch.minimum(start + k, torch.tensor(size + p)) - start)
        return (sizes[0][:, None] * sizes[1][None, :]).to(torch.float64)

    def _stochastic(self, x: Tensor, kernel: tuple[int, int], out: tuple[int, int]) -> Tensor:
        widths = self._padding(x.shape, kernel, out, (0, 0))
        padded = F.pad(x, widths) if any(widths) else x
        windows = padded.unfold(2, kernel[0], self.stride[0]).unfold(3, kernel[1], self.stride[1])
        windows = windows[:, :, :out[0], :out[1]].flatten(-2)
        if self.phase != TRAIN:
            return (windows * windows).sum(-1) / (windows.sum(-1) + FLT_MIN)
        cumsum = windows.detach().cumsum(-1)
        threshold = torch.rand(cumsum.shape[:-1], device=x.device, dtype=x.dtype) * cumsum[..., -1]
        # The first element whose running sum reaches the threshold (Caffe's second pass).
        chosen = (cumsum < threshold[..., None]).sum(-1, keepdim=True)
        chosen = chosen.clamp(max=windows.shape[-1] - 1)
        return windows.gather(-1, chosen).squeeze(-1)


class _MaxPool(torch.autograd.Function):
    """torch's max pooling (among equal maxima the first wins, as in Caffe), writing its
    output and input diff into the memory the Net parked for them (layers/buffers.py)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, kernel: tuple[int, int],
                stride: tuple[int, int]) -> Tensor:
        shape = tuple(x.shape[:2]) + tuple((size - k) // s + 1 for size, k, s in
                                           zip(x.shape[2:], kernel, stride))
        fmt = _memory_format(x)
        y = buffers.take(x, shape, x, fmt, buffers.OUTPUT)
        if y is None:
            y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        index = torch.empty(shape, dtype=torch.long, device=x.device, memory_format=fmt)
        torch.ops.aten.max_pool2d_with_indices.out(x, kernel, stride, (0, 0), (1, 1), False,
                                                   out=y, indices=index)
        ctx.save_for_backward(x, index)
        ctx.kernel, ctx.stride, ctx.x, ctx.fmt = kernel, stride, x, fmt
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, index = ctx.saved_tensors
        gx = buffers.take(ctx.x, x.shape, x, ctx.fmt)
        if gx is None:
            gx = torch.empty_like(x)
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            gy, x, ctx.kernel, ctx.stride, (0, 0), (1, 1), False, index, grad_input=gx)
        return gx, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pair(layer: Layer, p, name: str, default: int) -> tuple[int, int]:
    h, w = f"{name}_h", f"{name}_w"
    has_h, has_w = p.HasField(h), p.HasField(w)
    if has_h or has_w:
        if p.HasField(name) or not (has_h and has_w):
            raise layer.error(f"give {name}, or {h} and {w}; not both")
        return (getattr(p, h), getattr(p, w))
    value = getattr(p, name) if p.HasField(name) else default
    return (value, value)
