"""Per-pixel domain labels for the pixel-level domain classifier (FCNs in the Wild, Sec. 3.2)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register


@register("DomainLabel")
class DomainLabel(Layer):
    """Bottoms: the features the domain classifier sees (N, C, H, W) and the source
    images of the batch (S, ...), which come first in it. Top: (N, 1, H, W) labels,
    0 (source) for the first S images and 1 (target) for the rest — one per spatial
    unit, so the classifier's loss sums over every unit of every image (eq. 2-3).
    An inverted copy for L_Dinv is a Power layer (scale -1, shift 1) away."""
    num_bottoms = (2, 2)
    no_grad_bottoms = (0, 1)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        features, source = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(features) != 4:
            raise self.error(f"features must be (N, C, H, W), got {features}")
        if source[0] > features[0]:
            raise self.error(f"{source[0]} source images in a batch of {features[0]}")
        return [(features[0], 1, features[2], features[3])]

    def forward(self, features: Tensor, source: Tensor) -> tuple[Tensor]:
        n, _, height, width = features.shape
        labels = torch.ones((n, 1, height, width), dtype=features.dtype, device=features.device)
        labels[:source.shape[0]] = 0
        return (labels,)
