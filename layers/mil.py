"""The constrained multiple-instance loss of category-specific adaptation
(Hoffman et al. 2016, Sec. 3.3; Pathak et al.'s CCNN for the optimisation).

For every image of its score blob (coarse scores f, N = H*W pixels):

1. image-level labels: class c is present when the fraction of pixels whose
   argmax is c exceeds ``presence_ratio * alpha_c`` (or from an optional label
   bottom, as CCNN's WeakLoss takes them);
2. the latent target P: CCNN's constrained softmax with, for each present
   class, ``delta_c <= (1/N) sum_i P_ic`` (soft: multiplier cap ``lower_slack``)
   and ``(1/N) sum_i P_ic <= gamma_c`` (hard), absent classes suppressed;
   solved batched, on the scores' device, without gradient (an image whose
   present classes' upper bounds sum below 1 cannot meet them all and keeps
   only its lower bounds);
3. the loss, as CCNN's WeakLoss computes it: ``KL(P || Q) / N`` per image with
   ``Q = softmax(f)``, summed over images; its gradient is ``(Q - P) / N``;
4. classes with ``alpha_c > downweight_alpha`` get that gradient times
   ``downweight_factor`` (a custom autograd function: forward unchanged).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.base.errors import FcnwildError
from fcnwild.data.class_stats import load_class_stats
from fcnwild.layers.base import Layer, Shape, find_input
from fcnwild.layers.constraint_solver import (
    predicted_present,
    size_constraints,
    solve_constrained_softmax,
)
from fcnwild.layers.registry import register


class ClassGradientScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient of class c (axis 1) by scale[c]."""

    @staticmethod
    def forward(ctx, scores: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return scores.view_as(scores)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        shape = (1, -1) + (1,) * (grad.dim() - 2)
        return grad * scale.to(grad.dtype).reshape(shape), None


class WeakLoss(torch.autograd.Function):
    """CCNN WeakLoss for a fixed target P: loss_j = (sum P log P - sum P log Q) / N with the
    logs clamped at 1e-10 as CCNN does; the gradient is exactly (Q - P) / N."""

    @staticmethod
    def forward(ctx, scores: Tensor, target: Tensor) -> Tensor:
        pixels = scores[0, 0].numel()
        q = torch.softmax(scores, dim=1)
        dims = tuple(range(1, scores.dim()))
        loss = ((target * torch.log(target.clamp(min=1e-10))).sum(dims)
                - (target * torch.log(q.clamp(min=1e-10))).sum(dims)) / pixels
        ctx.save_for_backward(q, target)
        ctx.pixels = pixels
        return loss.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, target = ctx.saved_tensors
        return grad * (q - target) / ctx.pixels, None


@register("ConstrainedMILLoss")
class ConstrainedMILLoss(Layer):
    """Bottoms: scores (N, C, H, W) [, image-level labels (N, C) or (N, C, 1, 1)]."""
    is_loss = True
    num_bottoms = (1, 2)
    no_grad_bottoms = (1,)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.constrained_mil_param
        if len(bottom_shapes[0]) < 3:
            raise self.error(f"scores must be (N, C, H, W), got {tuple(bottom_shapes[0])}")
        classes = bottom_shapes[0][1]
        if not p.class_stats:
            raise self.error("constrained_mil_param.class_stats is required (a file written "
                             "by `fcnwild stats`)")
        path = find_input(p.class_stats, self.ctx.base_dir, "class statistics", self.name)
        try:
            stats = load_class_stats(path, classes)
        except FcnwildError as err:
            raise self.error(f"class statistics {path}: {err.detail}") from None
        for name in ("presence_ratio", "lower_slack", "upper_slack", "hardness",
                     "downweight_factor"):
            if getattr(p, name) < 0 or (name == "hardness" and p.hardness <= 0):
                raise self.error(f"{name} must be positive, got {getattr(p, name)}")
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        self.register_buffer("alpha", as_tensor(stats.alpha), persistent=False)
        self.register_buffer("lower", as_tensor(stats.delta), persistent=False)
        self.register_buffer("upper", as_tensor(stats.gamma), persistent=False)
        scale = torch.where(self.alpha > p.downweight_alpha,
                            torch.tensor(float(p.downweight_factor)), torch.tensor(1.0))
        self.register_buffer("gradient_scale", scale, persistent=False)
        self.last_present: Tensor | None = None
        self.last_solution = None

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        scores = tuple(bottom_shapes[0])
        if scores[1] != self.alpha.numel():
            raise self.error(f"scores have {scores[1]} classes, the statistics "
                             f"{self.alpha.numel()}")
        if len(bottom_shapes) > 1:
            labels = tuple(bottom_shapes[1])
            count = 1
            for d in labels[1:]:
                count *= d
            if labels[0] != scores[0] or count != scores[1]:
                raise self.error(f"image labels {labels} do not fit scores {scores}: expected "
                                 f"({scores[0]}, {scores[1]}[, 1, 1])")
        return [()]

    def forward(self, scores: Tensor, *labels: Tensor) -> tuple[Tensor]:
        p = self.param.constrained_mil_param
        if labels:
            present = labels[0].reshape(scores.shape[0], -1) > 0.5
        else:
            present = predicted_present(scores, self.alpha, p.presence_ratio)
        # Hard upper bounds whose sum over the present classes is below 1 admit no
        # distribution at all; such an image keeps only its lower bounds.
        feasible = (self.upper * present).sum(1, keepdim=True) >= 1
        upper = torch.where(feasible, self.upper, torch.ones_like(self.upper))
        self.relaxed_images = int((~feasible).sum())
        constraints = size_constraints(present, self.lower, upper,
                                       lower_slack=p.lower_slack, upper_slack=p.upper_slack,
                                       suppress_absent=p.suppress_absent)
        solution = solve_constrained_softmax(scores.detach(), constraints, p.hardness)
        self.last_present, self.last_solution = present, solution
        weighted = ClassGradientScale.apply(scores, self.gradient_scale)
        return (WeakLoss.apply(weighted, solution.P.to(scores.dtype)),)
