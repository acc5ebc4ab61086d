"""Dropout as in BVLC Caffe: in TRAIN keep each element with probability
1 - ratio and scale the kept ones by 1 / (1 - ratio); in TEST the identity.

(BVLC Caffe at 9b891540 has no ``scale_train`` option; forks that scale at
test time instead are not Caffe's wire format.)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.layers.base import TRAIN, Layer, Shape
from fcnwild.layers.registry import register


@register("Dropout")
class Dropout(Layer):
    supports_inplace = True

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self._next_mask: Tensor | None = None
        self._inplace_mask: Tensor | None = None

    def set_next_mask(self, mask: Tensor) -> None:
        """Use ``mask`` (already scaled by 1 / (1 - ratio)) for the next TRAIN forward,
        e.g. a mask recorded from Caffe; later forwards draw again."""
        self._next_mask = torch.as_tensor(mask)

    def _mask(self, x: Tensor) -> Tensor:
        mask, self._next_mask = self._next_mask, None
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape):
                raise self.error(f"the mask given by set_next_mask has shape "
                                 f"{tuple(mask.shape)}; the bottom is {tuple(x.shape)}")
            return mask.to(device=x.device, dtype=x.dtype)
        # Drawn in NCHW order whatever x's memory format, so that a channels-last net
        # drops the same elements. u < 1 - ratio is a Bernoulli(1 - ratio) draw; filling
        # uniforms is several times faster than torch's bernoulli_ on the CPU.
        # A bfloat16 uniform would round the keep probability: draw in float32 then.
        dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        keep = torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format).uniform_()
        return keep.lt_(1.0 - self.ratio).mul_(self.scale)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        if self.phase != TRAIN:
            return (x.clone(),)
        return (x * self._mask(x.detach()),)

    def forward_inplace(self, x: Tensor) -> None:
        if self.phase != TRAIN:
            return
        mask = self._mask(x)
        x.mul_(mask)
        self._inplace_mask = mask

    def backward_inplace(self, grad: Tensor) -> None:
        if self.phase != TRAIN:
            return
        mask, self._inplace_mask = self._inplace_mask, None
        if mask is None:
            raise self.error("in-place backward needs an in-place forward first")
        grad.mul_(mask)
