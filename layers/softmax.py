"""Softmax over ``softmax_param.axis`` (default 1: channels, per pixel)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from fcnwild.layers.axes import canonical_axis
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register


@register("Softmax")
class Softmax(Layer):
    full_precision = True

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self.error)
        return [tuple(bottom_shapes[0])]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        axis = canonical_axis(self.param.softmax_param.axis, x.dim(), self.error)
        return (x.softmax(axis),)
