"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

The rate is computed in double from the float32 solver fields and rounded to
float32, as Caffe's ``Dtype rate`` is. ``multistep`` keeps Caffe's
``current_step`` state, which advances by at most one step per call and is
saved in snapshots.
"""
from __future__ import annotations

import numpy as np

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import SolverError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _f32(value: float) -> float:
    return float(np.float32(value))


class LearningRate:
    """The lr policy of a SolverParameter; ``rate(iter)`` also advances ``current_step``."""

    def __init__(self, param: caffe_pb2.SolverParameter, file: str | None = None) -> None:
        self.param = param
        self.policy = param.lr_policy
        if self.policy not in POLICIES:
            raise SolverError(f"unknown lr_policy '{self.policy}'; expected one of "
                              f"{', '.join(POLICIES)}", file=file)
        if self.policy in ("step", "sigmoid") and param.stepsize <= 0 and self.policy == "step":
            raise SolverError("lr_policy 'step' needs a positive stepsize", file=file)
        if self.policy == "poly" and param.max_iter <= 0:
            raise SolverError("lr_policy 'poly' needs a positive max_iter", file=file)
        values = list(param.stepvalue)
        if self.policy == "multistep" and values != sorted(values):
            raise SolverError(f"multistep stepvalues must increase, got {values}", file=file)
        self.current_step = 0

    def rate(self, iteration: int) -> float:
        # numpy float64 scalars are C doubles: like Caffe's pow/exp they overflow to inf and
        # give NaN for a negative base, where Python floats raise or turn complex.
        with np.errstate(over="ignore", invalid="ignore"):
            return _f32(self._rate(iteration))

    def _rate(self, iteration: int) -> np.float64:
        p = self.param
        base_lr, gamma, power = (np.float64(_f32(v)) for v in (p.base_lr, p.gamma, p.power))
        if self.policy == "fixed":
            return base_lr
        if self.policy == "step":
            self.current_step = iteration // p.stepsize
            return base_lr * gamma ** self.current_step
        if self.policy == "exp":
            return base_lr * gamma ** iteration
        if self.policy == "inv":
            return base_lr * (1.0 + gamma * iteration) ** (-power)
        if self.policy == "multistep":
            if self.current_step < len(p.stepvalue) and \
                    iteration >= p.stepvalue[self.current_step]:
                self.current_step += 1
            return base_lr * gamma ** self.current_step
        if self.policy == "poly":
            # Caffe evaluates 1 - iter/max_iter in float32.
            fraction = np.float32(1.0) - np.float32(iteration) / np.float32(p.max_iter)
            return base_lr * np.float64(fraction) ** power
        # sigmoid
        return base_lr * (1.0 / (1.0 + np.exp(-gamma * (iteration - p.stepsize))))
