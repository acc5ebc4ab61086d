"""Global alignment: the pixel-level domain classifier and the alternating solver
(no gradient reversal) on two separable feature clouds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import SolverError
from fcnwild.solvers.adversarial import AlternatingSolver

NET = """
name: "clouds"
layer { name: "input" type: "Input" top: "x" top: "x_source"
        input_param { shape { dim: 8 dim: 2 dim: 3 dim: 3 } shape { dim: 4 dim: 2 dim: 3 dim: 3 } } }
layer { name: "silence" type: "Silence" bottom: "x_source" }
layer { name: "rep" type: "Convolution" bottom: "x" top: "feat"
        convolution_param { num_output: 2 kernel_size: 1
                            weight_filler { type: "constant" value: 0 } } }
layer { name: "domain_label" type: "DomainLabel" bottom: "feat" bottom: "x_source"
        top: "domain_label" }
layer { name: "dom_fc1" type: "Convolution" bottom: "feat" top: "dom_fc1"
        convolution_param { num_output: 8 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "dom_relu1" type: "ReLU" bottom: "dom_fc1" top: "dom_fc1" }
layer { name: "dom_score" type: "Convolution" bottom: "dom_fc1" top: "dom_score"
        convolution_param { num_output: 2 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "dom_loss" type: "SoftmaxWithLoss" bottom: "dom_score" bottom: "domain_label"
        top: "dom_loss" loss_param { normalization: NONE } }
layer { name: "domain_label_inv" type: "Power" bottom: "domain_label" top: "domain_label_inv"
        power_param { scale: -1 shift: 1 } }
layer { name: "dom_loss_inv" type: "SoftmaxWithLoss" bottom: "dom_score"
        bottom: "domain_label_inv" top: "dom_loss_inv" loss_param { normalization: NONE } }
layer { name: "dom_accuracy" type: "Accuracy" bottom: "dom_score" bottom: "domain_label"
        top: "dom_accuracy" }
"""

SOLVER = """
type: "SGD" base_lr: 0.002 momentum: 0.5 lr_policy: "fixed" max_iter: 1000
random_seed: 5 snapshot_after_train: false
adversarial_param {
  classifier_layer: "dom_fc1" classifier_layer: "dom_score"
  classifier_loss { top: "dom_loss" weight: 1 }
  representation_loss { top: "dom_loss" weight: 0.5 }
  representation_loss { top: "dom_loss_inv" weight: 0.5 }
}
"""


def make_solver(solver_text: str = SOLVER, seed: int = 0) -> AlternatingSolver:
    param = text_format.Parse(solver_text, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = AlternatingSolver(param)
    rng = np.random.default_rng(seed)
    # Source cloud around (-1.5, 0), target cloud around (+1.5, 0): separable by feature 0.
    x = rng.normal(0, 0.4, (8, 2, 3, 3)).astype(np.float32)
    x[:4, 0] -= 1.5
    x[4:, 0] += 1.5
    solver.net.set_input("x", x)
    solver.net.set_input("x_source", x[:4])
    with torch.no_grad():   # representation starts as the identity map
        solver.net.layer_dict["rep"].blobs[0].copy_(torch.eye(2).reshape(2, 2, 1, 1))
    return solver


def snapshot_params(solver):
    return {(e.layer, e.index): e.tensor.detach().clone() for e in solver.net.learnable_params}


def test_each_step_changes_only_its_own_params():
    solver = make_solver()
    before = snapshot_params(solver)
    solver.classifier_step()
    after = snapshot_params(solver)
    for (layer, index), value in before.items():
        same = torch.equal(value, after[(layer, index)])
        assert same == (layer == "rep"), (layer, index)
    solver.representation_step()
    final = snapshot_params(solver)
    for (layer, index), value in after.items():
        same = torch.equal(value, final[(layer, index)])
        assert same == (layer != "rep"), (layer, index)


def test_representation_objective_is_half_of_both_domain_losses_with_analytic_gradient():
    solver = make_solver()
    net = solver.net
    net.set_loss_weights(solver.representation_weights)
    loss = net.forward_backward()
    dom, inv = float(net.blobs["dom_loss"].data), float(net.blobs["dom_loss_inv"].data)
    assert loss == pytest.approx(0.5 * (dom + inv), rel=1e-6)
    # Analytic: d/dz of 1/2 (-log p_y - log p_(1-y)) is p - 1/2 for both logits.
    scores = torch.from_numpy(net.blobs["dom_score"].data.copy())
    expected = torch.softmax(scores, dim=1) - 0.5
    np.testing.assert_allclose(net.blobs["dom_score"].diff, expected.numpy(), atol=1e-6)
    # ... and through the frozen classifier to the representation, checked by autograd.
    feat = torch.from_numpy(net.blobs["feat"].data.copy()).requires_grad_()
    w1, b1 = (t.detach() for t in net.layer_dict["dom_fc1"].blobs)
    w2, b2 = (t.detach() for t in net.layer_dict["dom_score"].blobs)
    z = F.conv2d(F.relu(F.conv2d(feat, w1, b1)), w2, b2)
    y = torch.from_numpy(net.blobs["domain_label"].data.copy()).long()[:, 0]
    objective = 0.5 * (F.cross_entropy(z, y, reduction="sum") +
                       F.cross_entropy(z, 1 - y, reduction="sum"))
    (grad,) = torch.autograd.grad(objective, feat)
    np.testing.assert_allclose(net.blobs["feat"].diff, grad.numpy(), rtol=1e-5, atol=1e-6)


def test_classifier_steps_separate_and_representation_steps_confuse():
    solver = make_solver()
    accuracy = lambda: float(solver.net.blobs["dom_accuracy"].data)  # noqa: E731
    for _ in range(60):
        solver.classifier_step()
    trained = accuracy()
    assert trained > 0.95        # the clouds are separable: the classifier learns them
    for _ in range(150):
        solver.representation_step()
    with torch.no_grad():
        solver.net.forward_range(0, len(solver.net.layers) - 1)
    confused = accuracy()
    assert abs(confused - 0.5) < abs(trained - 0.5) / 2   # pushed back toward chance
    feat = solver.net.blobs["feat"].data
    gap = abs(feat[:4, 0].mean() - feat[4:, 0].mean())
    assert gap < 1.0             # the clouds' separating feature has been aligned (was 3)


def test_solver_iteration_alternates_and_counts_once():
    solver = make_solver(SOLVER.replace("adversarial_param {",
                                        "adversarial_param { classifier_steps: 2 "
                                        "representation_steps: 3"))
    calls = []
    solver.classifier_step = lambda: calls.append("c") or 1.0
    solver.representation_step = lambda: calls.append("r") or 2.0
    solver.step(2)
    assert calls == ["c", "c", "r", "r", "r"] * 2 and solver.iter == 2


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('classifier_layer: "dom_fc1" classifier_layer: "dom_score"',
                         'classifier_layer: "nope"'), "unknown"),
    (lambda s: s.replace('classifier_loss { top: "dom_loss" weight: 1 }',
                         'classifier_loss { top: "feat" weight: 1 }'), "not loss tops"),
    (lambda s: s[:s.index("adversarial_param")], "needs adversarial_param"),
])
def test_configuration_errors(edit, message):
    with pytest.raises(SolverError, match=message):
        make_solver(edit(SOLVER))
