"""Loss layers: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss,
MultinomialLogisticLoss, HingeLoss.

The top is Caffe's 0-axis loss blob: the loss itself, never multiplied by
``loss_weight`` (the Net seeds backward with the weight, which is how Caffe
applies it). Normalizers follow LossLayer::GetNormalizer and are clamped to
at least 1; labels are truncated to int as Caffe's static_cast does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, LayerContext, Shape
from fcnwild.layers.registry import register

FLT_MIN = 1.1754943508222875e-38
LossParameter = caffe_pb2.LossParameter


class _LossLayer(Layer):
    """Caffe's LossLayer: two bottoms with one batch size, a scalar top."""
    is_loss = True
    num_bottoms = (2, 2)
    no_grad_bottoms = (1,)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if not a or not b or a[0] != b[0]:
            raise self.error(f"the bottoms must have the same first (batch) dimension: "
                             f"{shape_str(a)} vs {shape_str(b)}")
        self.check_shapes(a, b)
        return [()]

    def check_shapes(self, data: Shape, label: Shape) -> None:
        """Layer-specific shape checks of (bottom 0, bottom 1)."""

    def normalization(self, default: int) -> int:
        p = self.param.loss_param
        if p.HasField("normalization"):
            return p.normalization
        if p.HasField("normalize"):
            return LossParameter.VALID if p.normalize else LossParameter.BATCH_SIZE
        return default

    def ignore_label(self) -> int | None:
        p = self.param.loss_param
        return p.ignore_label if p.HasField("ignore_label") else None

    def check_labels(self, labels: Tensor, valid: Tensor, num_classes: int) -> None:
        """Caffe only DCHECKs the label range (undefined behaviour when violated); we raise."""
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            value = int(labels[bad][0])
            ignore = self.ignore_label()
            also = f" or ignore_label {ignore}" if ignore is not None else ""
            raise self.error(f"label {value} is out of range: expected 0..{num_classes - 1}"
                             f"{also}")


def _normalizer(mode: int, outer: int, inner: int, valid_count: Tensor) -> Tensor:
    if mode == LossParameter.FULL:
        value = valid_count.new_tensor(float(outer * inner))
    elif mode == LossParameter.VALID:
        value = valid_count
    elif mode == LossParameter.BATCH_SIZE:
        value = valid_count.new_tensor(float(outer))
    else:
        value = valid_count.new_tensor(1.0)
    return value.clamp(min=1.0)


class _SoftmaxLossFunction(torch.autograd.Function):
    """Caffe's SoftmaxWithLoss on (outer, C, inner) scores.

    The loss clamps the true-class probability at FLT_MIN, yet the gradient is
    (prob - onehot) / normalizer everywhere (zero at ignored positions); torch's
    autograd of the clamped loss would drop the gradient where prob < FLT_MIN.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, labels: Tensor, valid: Tensor, normalizer: Tensor) -> Tensor:
        prob = torch.softmax(scores, dim=1)
        true_prob = prob.gather(1, labels[:, None, :]).squeeze(1)
        loss = -(torch.log(true_prob.clamp(min=FLT_MIN)) * valid).sum() / normalizer
        ctx.save_for_backward(prob, labels, valid, normalizer)
        return loss

    @staticmethod
    def backward(ctx, dloss: Tensor):
        prob, labels, valid, normalizer = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(1, labels[:, None, :], -torch.ones_like(prob[:, :1, :]))
        grad.mul_(valid[:, None, :]).mul_(dloss / normalizer)
        return grad, None, None, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_LossLayer):
    """Multinomial logistic loss of softmax(bottom 0) over ``softmax_param.axis``
    against integer labels (bottom 1; count = outer * inner).

    Normalization (loss_param): VALID (default; non-ignored labels), FULL,
    BATCH_SIZE (outer count), NONE; the deprecated ``normalize: false`` means
    BATCH_SIZE. The two-top form (loss + prob) aborts at net setup in Caffe
    9b891540 and is refused here.
    """
    num_tops = (1, 2)

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        if len(param.top) == 2:
            raise self.error("SoftmaxWithLoss with a second (prob) top cannot be built in "
                             "Caffe 9b891540 (net setup aborts: 'loss_weight must be "
                             "unspecified or specified once per top blob'); add a separate "
                             "Softmax layer for the probabilities")

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.mode = self.normalization(LossParameter.VALID)

    def _dims(self, data: Sequence[int], label: Sequence[int]) -> tuple[int, int, int, int]:
        axis = canonical_axis(self.param.softmax_param.axis, len(data), self.error)
        outer, inner = count(data, 0, axis), count(data, axis + 1)
        if outer * inner != count(label):
            raise self.error(f"number of labels must match number of predictions: scores "
                             f"{shape_str(data)} with softmax axis {axis} need "
                             f"{outer * inner} labels, label blob is {shape_str(label)}")
        return axis, outer, data[axis], inner

    def check_shapes(self, data: Shape, label: Shape) -> None:
        self._dims(data, label)

    def forward(self, scores: Tensor, label: Tensor) -> tuple[Tensor]:
        _, outer, classes, inner = self._dims(scores.shape, label.shape)
        labels = label.detach().reshape(outer, inner).trunc().long()
        ignore = self.ignore_label()
        valid = (labels != ignore) if ignore is not None else torch.ones_like(labels, dtype=bool)
        self.check_labels(labels, valid, classes)
        normalizer = _normalizer(self.mode, outer, inner, valid.sum().to(scores.dtype))
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        loss = _SoftmaxLossFunction.apply(scores.reshape(outer, classes, inner), labels,
                                          valid.to(scores.dtype), normalizer)
        return (loss,)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    """Cross-entropy of sigmoid(bottom 0) against targets in [0, 1] (bottom 1, same count).

    Default normalization is BATCH_SIZE (not VALID) unless ``normalization`` or the
    legacy ``normalize`` is given; targets equal to ``ignore_label`` (after int
    truncation) contribute neither loss nor gradient. The gradient is
    (sigmoid(x) - target) / normalizer, as Caffe's.
    """

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.mode = self.normalization(LossParameter.BATCH_SIZE)

    def check_shapes(self, data: Shape, label: Shape) -> None:
        if count(data) != count(label):
            raise self.error(f"the bottoms must have the same count: {shape_str(data)} vs "
                             f"{shape_str(label)}")

    def forward(self, x: Tensor, target: Tensor) -> tuple[Tensor]:
        self.reshape([x.shape, target.shape])
        target = target.detach().reshape(x.shape)
        ignore = self.ignore_label()
        valid = (target.trunc() != ignore).to(x.dtype) if ignore is not None else \
            torch.ones_like(x.detach())
        normalizer = _normalizer(self.mode, x.shape[0], count(x.shape, 1), valid.sum())
        loss = F.binary_cross_entropy_with_logits(x, target, weight=valid, reduction="sum")
        return (loss / normalizer,)


@register("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    """sum((a - b)^2) / (2 N); both bottoms receive gradients."""
    no_grad_bottoms = ()

    def check_shapes(self, data: Shape, label: Shape) -> None:
        if count(data, 1) != count(label, 1):
            raise self.error(f"inputs must have the same dimension: {shape_str(data)} vs "
                             f"{shape_str(label)}")

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor]:
        self.reshape([a.shape, b.shape])
        diff = a - b.reshape(a.shape)
        return ((diff * diff).sum() / a.shape[0] / 2,)


def _value_of_but_gradient_through(clamped: Tensor, raw: Tensor) -> Tensor:
    """``clamped``'s value with ``raw``'s gradient path (Caffe differentiates the clamp away)."""
    return raw + (clamped - raw).detach()


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    """-sum log(max(prob[label], 1e-20)) / N for probabilities (N, dim) and labels (N)."""

    def check_shapes(self, data: Shape, label: Shape) -> None:
        if count(label, 1) != 1:
            raise self.error(f"the label blob must hold one label per item, got {shape_str(label)}")

    def forward(self, prob: Tensor, label: Tensor) -> tuple[Tensor]:
        self.reshape([prob.shape, label.shape])
        num = prob.shape[0]
        rows = prob.reshape(num, -1)
        labels = label.detach().reshape(num).trunc().long()
        self.check_labels(labels, torch.ones_like(labels, dtype=bool), rows.shape[1])
        true_prob = rows.gather(1, labels[:, None]).squeeze(1)
        safe = _value_of_but_gradient_through(true_prob.clamp(min=1e-20), true_prob)
        return (-torch.log(safe).sum() / num,)


@register("HingeLoss")
class HingeLoss(_LossLayer):
    """One-vs-all hinge loss: sum_j max(0, 1 - delta(label, j) * x_j) with delta = +-1,
    summed (L1) or squared (L2), divided by N."""

    def check_shapes(self, data: Shape, label: Shape) -> None:
        if count(label, 1) != 1:
            raise self.error(f"the label blob must hold one label per item, got {shape_str(label)}")

    def forward(self, x: Tensor, label: Tensor) -> tuple[Tensor]:
        self.reshape([x.shape, label.shape])
        num = x.shape[0]
        rows = x.reshape(num, -1)
        labels = label.detach().reshape(num).trunc().long()
        self.check_labels(labels, torch.ones_like(labels, dtype=bool), rows.shape[1])
        sign = torch.ones_like(rows.detach()).scatter_(1, labels[:, None], -1.0)
        margin = F.relu(1 + sign * rows)
        if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            return ((margin * margin).sum() / num,)
        return (margin.sum() / num,)
