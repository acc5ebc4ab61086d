"""InnerProduct: axes from ``axis`` on are flattened into K inputs, y = x W^T + b.

Weights are (N, K), or (K, N) with ``transpose: true``, as Caffe stores them.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.fillers import fill
from fcnwild.layers.registry import register


@register("InnerProduct")
class InnerProduct(Layer):

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.inner_product_param
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error("InnerProduct needs num_output > 0")
        shape = tuple(bottom_shapes[0])
        self.axis_param = p.axis
        axis = canonical_axis(p.axis, len(shape), self.error)
        self.num_output, self.inputs = p.num_output, count(shape, axis)
        self.transpose = p.transpose
        weight_shape = ((self.inputs, self.num_output) if self.transpose
                        else (self.num_output, self.inputs))
        self.add_blob(fill(p.weight_filler, weight_shape, self.error))
        if p.bias_term:
            self.add_blob(fill(p.bias_filler, (self.num_output,), self.error))

    def _axis(self, shape: Sequence[int]) -> int:
        axis = canonical_axis(self.axis_param, len(shape), self.error)
        if count(shape, axis) != self.inputs:
            raise self.error(f"bottom {shape_str(shape)} has {count(shape, axis)} inputs from "
                             f"axis {axis} on; the weights expect {self.inputs}")
        return axis

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis = self._axis(shape)
        return [shape[:axis] + (self.num_output,)]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        axis = self._axis(x.shape)
        flat = x.reshape(count(x.shape[:axis]), self.inputs)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        y = F.linear(flat, weight, self.blob(1))
        return (y.reshape(tuple(x.shape[:axis]) + (self.num_output,)),)
