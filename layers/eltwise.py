"""Eltwise: elementwise SUM (with per-bottom coeff), PROD or MAX of its bottoms."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register

EltwiseOp = caffe_pb2.EltwiseParameter


class _QuotientProdFunction(torch.autograd.Function):
    """PROD with ``stable_prod_grad: false``: Caffe's backward d x_i = dy * y / x_i
    (NaN/Inf where x_i is 0, unlike the product of the other bottoms)."""

    @staticmethod
    def forward(ctx, *bottoms: Tensor) -> Tensor:
        y = bottoms[0] * bottoms[1]
        for x in bottoms[2:]:
            y = y * x
        ctx.save_for_backward(y, *bottoms)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        y, *bottoms = ctx.saved_tensors
        return tuple(dy * y / x for x in bottoms)


@register("Eltwise")
class Eltwise(Layer):
    num_bottoms = (2, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.eltwise_param
        self.operation = p.operation
        if len(p.coeff) not in (0, len(self.param.bottom)):
            raise self.error(f"{len(p.coeff)} coeffs for {len(self.param.bottom)} bottoms; "
                             "Eltwise takes one coefficient per bottom")
        if len(p.coeff) and self.operation != EltwiseOp.SUM:
            raise self.error("coefficients are only used by operation SUM")
        self.coeffs = list(p.coeff) or [1.0] * len(self.param.bottom)
        self.stable_prod_grad = p.stable_prod_grad

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if tuple(shape) != first:
                raise self.error(f"all bottoms must have one shape: bottom 0 is "
                                 f"{shape_str(first)}, bottom {i} is {shape_str(shape)}")
        return [first]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor]:
        self.reshape([b.shape for b in bottoms])
        if self.operation == EltwiseOp.SUM:
            y = None
            for c, x in zip(self.coeffs, bottoms):
                term = x if c == 1 else x * c
                y = term if y is None else y + term
            return (y,)
        if self.operation == EltwiseOp.PROD:
            if not self.stable_prod_grad:
                return (_QuotientProdFunction.apply(*bottoms),)
            y = bottoms[0] * bottoms[1]
            for x in bottoms[2:]:
                y = y * x
            return (y,)
        # MAX: Caffe takes bottom 1 on a tie between bottoms 0 and 1, and keeps the earlier
        # winner on ties with later bottoms; torch.where routes the gradient the same way.
        y = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for x in bottoms[2:]:
            y = torch.where(x > y, x, y)
        return (y,)
