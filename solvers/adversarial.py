"""The alternating adversarial solver of FCNs in the Wild (Hoffman et al. 2016, eq. 6-7).

No gradient is ever reversed. Each iteration alternates

(a) ``classifier_steps`` classifier steps: minimise ``classifier_loss`` (L_D)
    over the domain classifier's params theta_D only; the representation is run
    without recording (it is frozen in this step) and backward stops at the
    first classifier layer;
(b) ``representation_steps`` representation steps: minimise
    ``representation_loss`` (L_seg + 1/2 (L_D + L_Dinv) [+ L_mi]) over all other
    params theta, theta_D frozen (its diffs are computed to reach fc7, never applied).

Both sides use the solver's update rule and lr policy (theta_D's rate times
``classifier_lr_mult``), Caffe's update order, and one history per param, so
snapshots keep Caffe's solverstate layout and resume exactly.
"""
from __future__ import annotations

import os

import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import SolverError
from fcnwild.solvers.solver import Solver

PathLike = str | os.PathLike


class AlternatingSolver(Solver):
    """A Solver whose SolverParameter carries ``adversarial_param``."""

    def __init__(self, solver: PathLike | caffe_pb2.SolverParameter, **kwargs) -> None:
        super().__init__(solver, **kwargs)
        if not self.param.HasField("adversarial_param"):
            raise SolverError("the alternating solver needs adversarial_param in the solver "
                              "prototxt (classifier_layer, classifier_loss, "
                              "representation_loss)", file=self.file)
        a = self.param.adversarial_param
        names = list(a.classifier_layer)
        missing = [n for n in names if n not in self.net.layer_dict]
        if not names or missing:
            raise SolverError(f"adversarial_param.classifier_layer must name layers of the train "
                              f"net; {'none given' if not names else f'unknown: {missing}'}",
                              file=self.file)
        self.classifier_params = [i for i, e in enumerate(self.net.learnable_params)
                                  if e.layer in names]
        if not self.classifier_params:
            raise SolverError(f"the classifier layers {names} have no learnable params",
                              file=self.file)
        chosen = set(self.classifier_params)
        self.representation_params = [i for i in range(len(self.net.learnable_params))
                                      if i not in chosen]
        self.classifier_weights = self._objective(a.classifier_loss, "classifier_loss")
        self.representation_weights = self._objective(a.representation_loss,
                                                      "representation_loss")
        if a.classifier_steps < 1 or a.representation_steps < 1:
            raise SolverError("classifier_steps and representation_steps must be >= 1",
                              file=self.file)
        self.classifier_start = min(self.net.layer_names.index(n) for n in names)
        self.step_losses: dict[str, float] = {}

    def _objective(self, terms, field: str) -> dict[str, float]:
        weights = {term.top: float(term.weight) for term in terms}
        if not weights:
            raise SolverError(f"adversarial_param.{field} is empty; list the loss tops and "
                              "their weights", file=self.file)
        unknown = [top for top in weights if top not in self.net.loss_weights]
        if unknown:
            raise SolverError(f"adversarial_param.{field} names {unknown}, which are not loss "
                              f"tops of the train net (those are {sorted(self.net.loss_weights)})",
                              file=self.file)
        return weights

    def train_iteration(self) -> float:
        a = self.param.adversarial_param
        for _ in range(a.classifier_steps):
            self.step_losses["classifier"] = self.classifier_step()
        for _ in range(a.representation_steps):
            self.step_losses["representation"] = self.representation_step()
        return self.step_losses["representation"]

    def classifier_step(self) -> float:
        """(a): gradient of the classifier objective for theta_D only, then its update."""
        net, last = self.net, len(self.net.layers) - 1
        net.set_loss_weights(self.classifier_weights)
        net.clear_param_diffs()
        total = 0.0
        for _ in range(self.param.iter_size):
            with torch.no_grad():
                net.forward_range(0, self.classifier_start - 1)
            total += net.forward_range(self.classifier_start, last)
            net.backward_range(last, self.classifier_start)
        loss = self._finish_gradients(total / self.param.iter_size)
        self.apply_update(self.classifier_params, self.param.adversarial_param.classifier_lr_mult)
        self._record_tops()
        return loss

    def representation_step(self) -> float:
        """(b): gradient of the representation objective; only theta is updated."""
        self.net.set_loss_weights(self.representation_weights)
        loss = self.forward_backward()
        self.apply_update(self.representation_params)
        self._record_tops()
        return loss

    def _finish_gradients(self, loss: float) -> float:
        if self.world_size > 1:
            loss = self._all_reduce_diffs(loss)
        if loss != loss or loss in (float("inf"), float("-inf")):
            self._diverged(f"the classifier loss is {loss}")
        return loss

    def _record_tops(self) -> None:
        """The current value of every weighted-or-not loss top (for curves and logs)."""
        for name in self.net.loss_tops:
            self.step_losses[name] = float(self.net.blobs[name].tensor.detach().sum())
