"""Accuracy and ArgMax: forward-only layers (Caffe has no backward for them)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register


@register("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy of scores (bottom 0, classes on ``axis``) against labels.

    A label counts as hit when fewer than ``top_k`` classes score >= its own score
    (ties count against it, as in Caffe). Labels equal to ``ignore_label`` are
    skipped. A second top gives the per-class accuracy (0 for absent classes).
    """
    full_precision = True
    num_bottoms = (2, 2)
    num_tops = (1, 2)
    no_grad_bottoms = (0, 1)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.accuracy_param
        self.top_k = p.top_k
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None

    def _dims(self, data: Sequence[int], label: Sequence[int]) -> tuple[int, int, int]:
        axis = canonical_axis(self.param.accuracy_param.axis, len(data), self.error)
        outer, classes, inner = count(data, 0, axis), data[axis], count(data, axis + 1)
        if self.top_k > count(data) // max(count(label), 1):
            raise self.error(f"top_k {self.top_k} must not exceed the number of classes")
        if outer * inner != count(label):
            raise self.error(f"number of labels must match number of predictions: scores "
                             f"{shape_str(data)} with class axis {axis} need {outer * inner} "
                             f"labels, label blob is {shape_str(label)}")
        return outer, classes, inner

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        _, classes, _ = self._dims(bottom_shapes[0], bottom_shapes[1])
        return [()] + ([(classes,)] if len(self.param.top) == 2 else [])

    def forward(self, scores: Tensor, label: Tensor) -> tuple[Tensor, ...]:
        outer, classes, inner = self._dims(scores.shape, label.shape)
        scores = scores.detach().reshape(outer, classes, inner)
        labels = label.detach().reshape(outer, inner).trunc().long()
        valid = labels != self.ignore if self.ignore is not None else \
            torch.ones_like(labels, dtype=bool)
        bad = valid & ((labels < 0) | (labels >= classes))
        if bool(bad.any()):
            raise self.error(f"label {int(labels[bad][0])} is out of range: expected "
                             f"0..{classes - 1}")
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        true_score = scores.gather(1, safe[:, None, :])
        not_below = (scores >= true_score).sum(dim=1)          # includes the true class
        hit = (not_below <= self.top_k) & valid
        # Caffe: 0 when every label is ignored.
        accuracy = hit.sum().to(scores.dtype) / valid.sum().clamp(min=1).to(scores.dtype)
        if len(self.param.top) == 1:
            return (accuracy,)
        per_class_total = torch.zeros(classes, device=scores.device, dtype=scores.dtype)
        per_class_hits = torch.zeros_like(per_class_total)
        per_class_total.index_add_(0, safe[valid], torch.ones_like(safe[valid], dtype=scores.dtype))
        per_class_hits.index_add_(0, safe[hit], torch.ones_like(safe[hit], dtype=scores.dtype))
        per_class = torch.where(per_class_total > 0,
                                per_class_hits / per_class_total.clamp(min=1),
                                torch.zeros_like(per_class_total))
        return accuracy, per_class


@register("ArgMax")
class ArgMax(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries,
    over ``axis`` or, without an axis, over everything but the batch axis.
    Among equal values the higher index comes first (Caffe sorts (value, index)
    pairs in descending order)."""
    no_grad_bottoms = (0,)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.argmax_param
        self.out_max_val, self.top_k = p.out_max_val, p.top_k
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top_k must be >= 1")

    def _axis(self, shape: Sequence[int]) -> int | None:
        if not self.has_axis:
            if self.top_k > count(shape, 1):
                raise self.error(f"top_k {self.top_k} exceeds the {count(shape, 1)} values per "
                                 "item")
            return None
        axis = canonical_axis(self.param.argmax_param.axis, len(shape), self.error)
        if self.top_k > shape[axis]:
            raise self.error(f"top_k {self.top_k} exceeds axis {axis} of size {shape[axis]}")
        return axis

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis = self._axis(shape)
        if axis is not None:
            return [shape[:axis] + (self.top_k,) + shape[axis + 1:]]
        top = [1] * max(3, len(shape))
        top[0], top[2] = shape[0], self.top_k
        if self.out_max_val:
            top[1] = 2
        return [tuple(top)]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        top_shape = self.reshape([x.shape])[0]
        axis = self._axis(x.shape)
        x = x.detach()
        data = x.reshape(x.shape[0], -1) if axis is None else x.movedim(axis, -1)
        # Stable descending sort of the reversed axis puts higher indices first on ties.
        values, order = torch.sort(data.flip(-1), dim=-1, descending=True, stable=True)
        values = values[..., :self.top_k]
        index = (data.shape[-1] - 1 - order[..., :self.top_k]).to(x.dtype)
        if axis is not None:
            out = values if self.out_max_val else index
            return (out.movedim(-1, axis).contiguous(),)
        out = torch.cat([index, values], dim=-1) if self.out_max_val else index
        return (out.reshape(top_shape),)
