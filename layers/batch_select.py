"""Layers that pick items of the batch axis by index: BatchReindex and Filter.

Both copy whole items (everything after axis 0); the backward scatters the top diffs
back into the picked items (adding where an item is picked twice) and leaves the
others zero. The index/selector bottom never gets a gradient.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import shape_str
from fcnwild.layers.base import Layer, LayerContext, Shape
from fcnwild.layers.registry import register


@register("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[permut[i]]: bottom 1 is a 1-axis blob of item indices (floats,
    truncated to int), which may repeat or leave items out."""
    num_bottoms = (2, 2)
    no_grad_bottoms = (1,)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        data, permut = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(permut) != 1:
            raise self.error(f"the index bottom must have exactly 1 axis, got {shape_str(permut)}")
        if not data:
            raise self.error("the data bottom needs a batch axis")
        return [permut + data[1:]]

    def forward(self, data: Tensor, permut: Tensor) -> tuple[Tensor]:
        self.reshape([data.shape, permut.shape])
        index = permut.detach()
        # Caffe checks the float values, then truncates them.
        bad = (index < 0) | (index >= data.shape[0])
        if bool(bad.any()):
            value = float(index[bad][0])
            raise self.error(f"index {value:g} is out of range for a batch of {data.shape[0]} "
                             f"(expected 0 <= index < {data.shape[0]})")
        return (data.index_select(0, index.trunc().long()),)


@register("Filter")
class Filter(Layer):
    """Keeps the items whose selector value (the last bottom, shape (N[, 1, ...])) is
    non-zero, in every other bottom; one top per filtered bottom.

    As in Caffe, the tops have the full batch N after net setup and the number of
    selected items after a forward (an empty batch when nothing is selected);
    ``reshape`` after a forward reports the count of that forward.
    """
    num_bottoms = (2, None)
    num_tops = (1, None)

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        if len(param.top) != len(param.bottom) - 1:
            raise self.error(f"Filter needs one top per bottom except the selector (the last "
                             f"bottom): {len(param.bottom)} bottoms need {len(param.bottom) - 1} "
                             f"tops, got {len(param.top)}")
        self.no_grad_bottoms = (len(param.bottom) - 1,)
        self.selected: int | None = None

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        selector = tuple(bottom_shapes[-1])
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (last bottom) must be (N[, 1, ...]): all axes but "
                             f"the first must be 1, got {shape_str(selector)}")
        for i, shape in enumerate(bottom_shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise self.error(f"bottom {i} {shape_str(shape)} must have the selector's "
                                 f"first dimension {selector[0]}")
        num = selector[0] if self.selected is None else self.selected
        return [(num,) + tuple(shape[1:]) for shape in bottom_shapes[:-1]]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:
        self.reshape([b.shape for b in bottoms])
        selector = bottoms[-1].detach().reshape(-1)
        index = torch.nonzero(selector != 0).reshape(-1)
        self.selected = int(index.numel())
        return tuple(b.index_select(0, index) for b in bottoms[:-1])
