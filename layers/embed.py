"""Embed (a lookup table) and Parameter (a learnable blob as a top)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.fillers import fill
from fcnwild.layers.registry import register


@register("Embed")
class Embed(Layer):
    """top[..., :] = W[int(index)] + b: the bottom holds indices in [0, input_dim) as
    floats (truncated to int); the top has the bottom's shape plus ``num_output``.

    W is (input_dim, num_output) (InnerProduct's layout transposed), b (num_output).
    Repeated indices add up in W's diff; the index bottom gets no gradient (Caffe
    aborts when asked for one).
    """
    no_grad_bottoms = (0,)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.embed_param
        if p.num_output == 0:
            raise self.error("Embed needs num_output > 0")
        if p.input_dim == 0:
            raise self.error("Embed needs input_dim > 0 (the number of distinct indices)")
        self.num_output, self.input_dim = p.num_output, p.input_dim
        self.add_blob(fill(p.weight_filler, (self.input_dim, self.num_output), self.error))
        if p.bias_term:
            self.add_blob(fill(p.bias_filler, (self.num_output,), self.error))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0]) + (self.num_output,)]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        index = x.detach().trunc().long()
        bad = (index < 0) | (index >= self.input_dim)
        if bool(bad.any()):
            raise self.error(f"index {float(x.detach()[bad][0]):g} is out of range: expected "
                             f"0 <= index < input_dim ({self.input_dim})")
        y = F.embedding(index, self.blobs[0])
        bias = self.blob(1)
        return (y if bias is None else y + bias,)


@register("Parameter")
class Parameter(Layer):
    """No bottom; the top is the layer's one blob (``parameter_param.shape``, zeros until
    weights are loaded), data and diff shared: the top's diff is the param diff."""
    num_bottoms = (0, 0)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in self.shape):
            raise self.error(f"parameter_param.shape must not have negative dims: {self.shape}")
        self.add_blob(torch.zeros(self.shape))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self.shape]

    def forward(self) -> tuple[Tensor]:
        return (self.blobs[0],)
