"""Caffe's six update rules (sgd_solver.cpp and its subclasses), step for step.

``compute_update`` turns a param's (clipped, normalised, regularised) diff into
the update Caffe subtracts from the weights, in place, keeping Caffe's history
blobs: SGD/Nesterov/AdaGrad/RMSProp one per param; AdaDelta and Adam two sets
(gradient statistics, then update statistics / second moments) back to back,
as their solverstates store them.
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import SolverError


class UpdateRule:
    type_name: ClassVar[str]
    history_sets: ClassVar[int] = 1

    def __init__(self, param: caffe_pb2.SolverParameter, params: Sequence[Tensor],
                 file: str | None = None) -> None:
        self.param = param
        self.momentum = float(param.momentum)
        self.delta = float(param.delta)
        self.history: list[Tensor] = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                                      for _ in range(self.history_sets) for p in params]
        self.count = len(params)

    def compute_update(self, i: int, data: Tensor, diff: Tensor, local_rate: float,
                       iteration: int) -> None:  # pragma: no cover
        raise NotImplementedError


class SGD(UpdateRule):
    type_name = "SGD"

    def compute_update(self, i, data, diff, local_rate, iteration):
        history = self.history[i]
        history.mul_(self.momentum).add_(diff, alpha=local_rate)
        diff.copy_(history)


class Nesterov(UpdateRule):
    type_name = "Nesterov"

    def compute_update(self, i, data, diff, local_rate, iteration):
        history = self.history[i]
        previous = history.clone()
        history.mul_(self.momentum).add_(diff, alpha=local_rate)
        torch.add(history.mul(1 + self.momentum), previous, alpha=-self.momentum, out=diff)


class AdaGrad(UpdateRule):
    type_name = "AdaGrad"

    def compute_update(self, i, data, diff, local_rate, iteration):
        history = self.history[i]
        history.addcmul_(diff, diff)
        diff.div_(history.sqrt().add_(self.delta)).mul_(local_rate)


class RMSProp(UpdateRule):
    type_name = "RMSProp"

    def __init__(self, param, params, file=None):
        super().__init__(param, params, file)
        self.rms_decay = float(param.rms_decay)
        if not 0 <= self.rms_decay < 1:
            raise SolverError(f"rms_decay must be in [0, 1), got {self.rms_decay}", file=file)

    def compute_update(self, i, data, diff, local_rate, iteration):
        history = self.history[i]
        history.mul_(self.rms_decay).addcmul_(diff, diff, value=1 - self.rms_decay)
        diff.div_(history.sqrt().add_(self.delta)).mul_(local_rate)


class AdaDelta(UpdateRule):
    type_name = "AdaDelta"
    history_sets = 2

    def compute_update(self, i, data, diff, local_rate, iteration):
        grad_sq, update_sq = self.history[i], self.history[i + self.count]
        grad_sq.mul_(self.momentum).addcmul_(diff, diff, value=1 - self.momentum)
        scale = (update_sq + self.delta).div_(grad_sq + self.delta).sqrt_()
        diff.mul_(scale)
        update_sq.mul_(self.momentum).addcmul_(diff, diff, value=1 - self.momentum)
        diff.mul_(local_rate)


class Adam(UpdateRule):
    type_name = "Adam"
    history_sets = 2

    def compute_update(self, i, data, diff, local_rate, iteration):
        beta1, beta2 = self.momentum, float(self.param.momentum2)
        m, v = self.history[i], self.history[i + self.count]
        t = iteration + 1
        correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        m.mul_(beta1).add_(diff, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(diff, diff, value=1 - beta2)
        # Caffe's epsilon is added to sqrt(v), and the bias correction scales the step size.
        torch.div(m, v.sqrt().add_(self.delta), out=diff)
        diff.mul_(local_rate * correction)


RULES = {cls.type_name: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def make_rule(param: caffe_pb2.SolverParameter, params: Sequence[Tensor],
              file: str | None = None) -> UpdateRule:
    if param.type not in RULES:
        raise SolverError(f"unknown solver type '{param.type}'; expected one of "
                          f"{', '.join(RULES)}", file=file)
    if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        raise SolverError(f"momentum cannot be used with {param.type} (got momentum "
                          f"{param.momentum}); remove it from the solver", file=file)
    return RULES[param.type](param, params, file)
