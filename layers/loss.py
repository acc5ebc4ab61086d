"""Loss layers: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss,
MultinomialLogisticLoss, HingeLoss, InfogainLoss, ContrastiveLoss.

The top is Caffe's 0-axis loss blob: the loss itself, never multiplied by
``loss_weight`` (the Net seeds backward with the weight, which is how Caffe
applies it). Normalizers follow LossLayer::GetNormalizer and are clamped to
at least 1; labels are truncated to int as Caffe's static_cast does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from fcnwild.base import caffe_pb2
from fcnwild.base.blob_proto import read_blob_proto
from fcnwild.base.errors import FcnwildError
from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, LayerContext, Shape, find_input
from fcnwild.layers.registry import register

FLT_MIN = 1.1754943508222875e-38
# Caffe's kLOG_THRESHOLD: probabilities are clamped to it before the log.
LOG_THRESHOLD = 1e-20
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

    def label_layout(self, axis_param: int, data: Sequence[int], label: Sequence[int],
                     what: str) -> tuple[int, int, int, int]:
        """(axis, outer, classes, inner) of scores whose class axis is ``axis_param``, with
        one label per outer x inner position."""
        axis = canonical_axis(axis_param, len(data), self.error)
        outer, inner = count(data, 0, axis), count(data, axis + 1)
        if outer * inner != count(label):
            raise self.error(f"number of labels must match number of predictions: scores "
                             f"{shape_str(data)} with {what} axis {axis} need "
                             f"{outer * inner} labels, label blob is {shape_str(label)}")
        return axis, outer, data[axis], inner

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

    def class_labels(self, label: Tensor, outer: int, inner: int, classes: int,
                     dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """The (outer, inner) class labels with ignored positions set to 0, the valid mask
        (as ``dtype``) and the loss normalizer of ``self.mode``."""
        labels = label.detach().reshape(outer, inner).trunc().long()
        ignore = self.ignore_label()
        valid = (labels != ignore) if ignore is not None else torch.ones_like(labels, dtype=bool)
        self.check_labels(labels, valid, classes)
        normalizer = _normalizer(self.mode, outer, inner, valid.sum().to(dtype))
        return torch.where(valid, labels, torch.zeros_like(labels)), valid.to(dtype), normalizer

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
        return self.label_layout(self.param.softmax_param.axis, data, label, "softmax")

    def check_shapes(self, data: Shape, label: Shape) -> None:
        self._dims(data, label)

    def forward(self, scores: Tensor, label: Tensor) -> tuple[Tensor]:
        _, outer, classes, inner = self._dims(scores.shape, label.shape)
        labels, valid, normalizer = self.class_labels(label, outer, inner, classes,
                                                      scores.dtype)
        loss = _SoftmaxLossFunction.apply(scores.reshape(outer, classes, inner), labels,
                                          valid, normalizer)
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
        safe = _value_of_but_gradient_through(true_prob.clamp(min=LOG_THRESHOLD), true_prob)
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


class _InfogainLossFunction(torch.autograd.Function):
    """Caffe's InfogainLoss on (outer, C, inner) scores with per-position rows H[label, :]
    laid out as (outer, C, inner); also returns the softmax probabilities (no gradient).

    The loss clamps probabilities at kLOG_THRESHOLD; the gradient
    (prob * sum_l H[label, l] - H[label, :]) / normalizer ignores the clamp, as Caffe's.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, rows: Tensor, valid: Tensor,
                normalizer: Tensor) -> tuple[Tensor, Tensor]:
        prob = torch.softmax(scores, dim=1)
        log_prob = torch.log(prob.clamp(min=LOG_THRESHOLD))
        loss = -(rows * log_prob * valid[:, None, :]).sum() / normalizer
        ctx.save_for_backward(prob, rows, valid, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss: Tensor, dprob: Tensor):
        prob, rows, valid, normalizer = ctx.saved_tensors
        grad = prob * rows.sum(1, keepdim=True) - rows
        return grad * valid[:, None, :] * (dloss / normalizer), None, None, None


@register("InfogainLoss")
class InfogainLoss(_LossLayer):
    """-sum_l H[label, l] log softmax(bottom 0)_l over ``infogain_loss_param.axis``,
    summed over the non-ignored positions and divided by the normalizer.

    H (C x C) is a third bottom or the BlobProto file ``infogain_loss_param.source``
    (relative paths resolve against the prototxt's folder first, then the working
    directory). Normalization as SoftmaxWithLoss (default VALID); the deprecated
    ``normalize`` is refused, as in Caffe. An optional second top holds the softmax
    probabilities; with it both ``loss_weight`` values must be given. Neither the labels
    nor H get a gradient, nor does a diff on the probabilities propagate.
    """
    num_bottoms = (2, 3)
    num_tops = (1, 2)
    no_grad_bottoms = (1, 2)

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        if len(param.top) == 2 and not len(param.loss_weight):
            raise self.error("with a second (prob) top, loss_weight must be given for both "
                             "tops (e.g. loss_weight: 1 loss_weight: 0), as Caffe requires")
        if param.loss_param.HasField("normalize"):
            raise self.error("loss_param.normalize is deprecated and refused by InfogainLoss; "
                             "use loss_param.normalization")

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.mode = self.normalization(LossParameter.VALID)
        matrix = None if len(bottom_shapes) == 3 else torch.from_numpy(self._read_source())
        self.register_buffer("infogain", matrix, persistent=False)

    def _read_source(self) -> np.ndarray:
        source = self.param.infogain_loss_param.source
        if not source:
            raise self.error("InfogainLoss needs the matrix H: a third bottom, or "
                             "infogain_loss_param.source naming a BlobProto file")
        path = find_input(source, self.ctx.base_dir, "infogain matrix", self.name)
        try:
            return read_blob_proto(path)
        except FcnwildError as err:
            raise self.error(f"infogain matrix {path}: {err.detail}") from None

    def _dims(self, data: Sequence[int], label: Sequence[int],
              h_count: int) -> tuple[int, int, int, int]:
        axis, outer, classes, inner = self.label_layout(self.param.infogain_loss_param.axis,
                                                        data, label, "infogain")
        if h_count != classes * classes:
            raise self.error(f"H must be {classes}x{classes} for {classes} classes; it holds "
                             f"{h_count} values")
        return axis, outer, classes, inner

    def _h_count(self, bottom_shapes: Sequence[Shape]) -> int:
        if len(bottom_shapes) == 3:
            return count(bottom_shapes[2])
        return self.infogain.numel()

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        tops = super().reshape(bottom_shapes)
        self._dims(bottom_shapes[0], bottom_shapes[1], self._h_count(bottom_shapes))
        return tops + [tuple(bottom_shapes[0])] * (len(self.param.top) - 1)

    def forward(self, scores: Tensor, label: Tensor, *h: Tensor) -> tuple[Tensor, ...]:
        shapes = [scores.shape, label.shape] + [t.shape for t in h]
        super().reshape(shapes)
        _, outer, classes, inner = self._dims(scores.shape, label.shape, self._h_count(shapes))
        matrix = (h[0] if h else self.infogain).detach().reshape(classes, classes)
        labels, valid, normalizer = self.class_labels(label, outer, inner, classes,
                                                      scores.dtype)
        rows = matrix.to(scores.dtype)[labels].permute(0, 2, 1)
        loss, prob = _InfogainLossFunction.apply(scores.reshape(outer, classes, inner), rows,
                                                 valid, normalizer)
        return (loss, prob.reshape(scores.shape))[:len(self.param.top)]


class _ContrastiveLossFunction(torch.autograd.Function):
    """Caffe's ContrastiveLoss on (N, C) pairs a, b with similarity flags ``similar``.

    Non-legacy dissimilar pairs contribute max(margin - d, 0)^2, whose gradient Caffe
    computes as -(margin - d) / (d + 1e-4) * (a - b) / N: the 1e-4 keeps it finite at
    d = 0 and makes it differ from the exact derivative by about 1e-4 / d relative.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, similar: Tensor, margin: float,
                legacy: bool) -> Tensor:
        diff = a - b
        dist_sq = (diff * diff).sum(1)
        if legacy:
            dissimilar = torch.clamp(margin - dist_sq, min=0)
        else:
            dissimilar = torch.clamp(margin - torch.sqrt(dist_sq), min=0) ** 2
        per_pair = torch.where(similar, dist_sq, dissimilar)
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy = margin, legacy
        return per_pair.sum() / a.shape[0] / 2

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss: Tensor):
        diff, dist_sq, similar = ctx.saved_tensors
        if ctx.legacy:
            gap = ctx.margin - dist_sq
            scale = -torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            gap = ctx.margin - dist
            scale = -gap / (dist + 1e-4)
        scale = torch.where(gap > 0, scale, torch.zeros_like(scale))
        scale = torch.where(similar, torch.ones_like(scale), scale)
        grad_a = diff * (scale * dloss / diff.shape[0])[:, None]
        return grad_a, -grad_a, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    """sum_i [y_i d_i^2 + (1 - y_i) max(margin - d_i, 0)^2] / 2N for pairs (a_i, b_i),
    d_i = ||a_i - b_i||, y_i = int(sim_i) != 0; ``legacy_version`` uses
    max(margin - d_i^2, 0) instead. a and b are (N, C[, 1, 1]), sim (N[, 1, 1, 1]).
    a and b get Caffe's gradient (see ``_ContrastiveLossFunction``), sim none.
    """
    num_bottoms = (3, 3)
    no_grad_bottoms = (2,)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        tops = super().reshape(bottom_shapes)
        a, b, sim = (tuple(s) for s in bottom_shapes)
        legacy = [self._legacy_dims(s) for s in (a, b, sim)]
        if legacy[0][1] != legacy[1][1] or legacy[0][2:] != (1, 1) or legacy[1][2:] != (1, 1):
            raise self.error(f"a and b must be (N, C[, 1, 1]) with the same C: got "
                             f"{shape_str(a)} and {shape_str(b)}")
        if legacy[2][1:] != (1, 1, 1) or sim[:1] != a[:1]:
            raise self.error(f"the similarity bottom must hold one value per pair, (N[, 1, 1, "
                             f"1]) with N = {a[0]}: got {shape_str(sim)}")
        return tops

    def _legacy_dims(self, shape: Shape) -> tuple[int, int, int, int]:
        """Caffe's num/channels/height/width of a blob with at most 4 axes."""
        if len(shape) > 4:
            raise self.error(f"bottoms must have at most 4 axes, got {shape_str(shape)}")
        return tuple(shape[i] if i < len(shape) else 1 for i in range(4))

    def forward(self, a: Tensor, b: Tensor, sim: Tensor) -> tuple[Tensor]:
        self.reshape([a.shape, b.shape, sim.shape])
        num = a.shape[0]
        similar = sim.detach().reshape(num).trunc() != 0
        p = self.param.contrastive_loss_param
        return (_ContrastiveLossFunction.apply(a.reshape(num, -1), b.reshape(num, -1), similar,
                                               p.margin, p.legacy_version),)
