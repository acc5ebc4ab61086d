"""Category-specific adaptation: the constrained MIL loss layer."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError, NetError
from fcnwild.data.class_stats import ClassStats, save_class_stats
from fcnwild.layers.base import LayerContext
from fcnwild.layers.constraint_solver import (
    predicted_present,
    size_constraints,
    solve_constrained_softmax,
)
from fcnwild.layers.mil import ClassGradientScale, ConstrainedMILLoss, WeakLoss

CCNN = Path(__file__).parent / "fixtures" / "ccnn_reference" / "problems.h5"
C = 5


def write_stats(path: Path, alpha, delta, gamma) -> Path:
    names = tuple(f"class{c}" for c in range(len(alpha)))
    stats = ClassStats(names, "test", np.array(alpha, float), np.array(delta, float),
                       np.array(gamma, float), np.ones(len(alpha), int), 10)
    save_class_stats(stats, path)
    return path


def make_layer(tmp_path: Path, extra: str = "", bottoms: int = 1,
               stats=((0.3, 0.02, 0.05, 0.2, 0.01), (0.4, 0.05, 0.1, 0.3, 0.03),
                      (0.6, 0.1, 0.2, 0.5, 0.08))) -> ConstrainedMILLoss:
    write_stats(tmp_path / "stats.json", *stats)
    bottom = 'bottom: "score" ' + ('bottom: "labels" ' if bottoms == 2 else "")
    param = text_format.Parse(
        f'name: "mil" type: "ConstrainedMILLoss" {bottom} top: "mil_loss" '
        f'constrained_mil_param {{ class_stats: "stats.json" {extra} }}', caffe_pb2.LayerParameter())
    layer = ConstrainedMILLoss(param, LayerContext(base_dir=tmp_path))
    shapes = [(2, C, 6, 7)] + ([(2, C)] if bottoms == 2 else [])
    layer.setup(shapes)
    assert layer.reshape(shapes) == [()]
    return layer


def test_gradient_functions_in_float64():
    scores = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(2, 4, 3, 3, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda s: WeakLoss.apply(s, target), (scores,))
    # With unit scales the gradient scaler is the identity, gradient included ...
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: WeakLoss.apply(ClassGradientScale.apply(s, ones),
                                                             target), (scores,))
    # ... with scales, the forward is unchanged and each class's gradient is scaled exactly.
    scale = torch.tensor([0.1, 1.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(ClassGradientScale.apply(scores, scale), scores)
    weights = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((ClassGradientScale.apply(scores, scale) * weights).sum(),
                                  scores)
    assert torch.equal(grad, weights * scale.reshape(1, 4, 1, 1))


def test_downweighting_is_exactly_a_tenth_for_large_classes(tmp_path):
    weighted = make_layer(tmp_path)
    plain = make_layer(tmp_path, "downweight_factor: 1")
    torch.manual_seed(0)
    scores = torch.randn(2, C, 6, 7)
    grads = []
    for layer in (weighted, plain):
        x = scores.clone().requires_grad_()
        layer(x)[0].backward()
        grads.append(x.grad)
    large = weighted.alpha > 0.1               # alpha = (0.3, 0.02, 0.05, 0.2, 0.01)
    assert large.tolist() == [True, False, False, True, False]
    assert torch.equal(grads[0][:, large], grads[1][:, large] * np.float32(0.1))
    assert torch.equal(grads[0][:, ~large], grads[1][:, ~large])


def test_loss_gradient_and_target_follow_the_constraints(tmp_path):
    layer = make_layer(tmp_path, "downweight_factor: 1")
    torch.manual_seed(1)
    scores = (torch.randn(2, C, 6, 7) * 2).requires_grad_()
    loss = layer(scores)[0]
    loss.backward()
    present = predicted_present(scores, layer.alpha, 0.1)
    assert torch.equal(layer.last_present, present)
    solution = solve_constrained_softmax(
        scores.detach(), size_constraints(present, layer.lower, layer.upper, lower_slack=2.0),
        1.0)
    P = solution.P
    assert torch.equal(layer.last_solution.P, P)
    assert torch.all(P[~present[:, :, None, None].expand_as(P)] == 0)   # absent: suppressed
    q = torch.softmax(scores.detach(), 1)
    n = 6 * 7
    np.testing.assert_allclose(scores.grad.numpy(), ((q - P) / n).numpy(), atol=1e-7)
    kl = (P * (torch.log(P.clamp(min=1e-10)) - torch.log(q.clamp(min=1e-10)))).sum() / n
    assert loss.item() == pytest.approx(float(kl), rel=1e-5)
    # Upper bounds are hard, lower bounds may be violated only by capped multipliers.
    fractions = P.mean((2, 3))
    assert torch.all(fractions[present] <= layer.upper.expand_as(fractions)[present] + 1e-3)


def test_absent_classes_keep_their_mass_when_not_suppressed(tmp_path):
    layer = make_layer(tmp_path, "suppress_absent: false", bottoms=2)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float32)
    scores = torch.randn(2, C, 6, 7)
    layer(scores, labels)
    P, absent = layer.last_solution.P, ~(labels > 0.5)
    assert torch.all(P.mean((2, 3))[absent] > 0)
    # Suppressed (the default), the same image gives those classes no mass at all.
    suppressing = make_layer(tmp_path, bottoms=2)
    suppressing(scores, labels)
    assert torch.all(suppressing.last_solution.P.mean((2, 3))[absent] == 0)


def test_image_labels_from_a_bottom_replace_the_prediction(tmp_path):
    layer = make_layer(tmp_path, bottoms=2)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.float32)
    layer(torch.randn(2, C, 6, 7), labels)
    assert torch.equal(layer.last_present, labels > 0.5)
    # Image 1's classes may cover at most 0.1 + 0.2 of it: its upper bounds are dropped.
    assert layer.relaxed_images == 1 and bool(layer.last_solution.converged.all())


def test_image_label_rule_fraction_above_a_tenth_of_alpha():
    alpha = torch.tensor([0.5, 0.2, 0.2])
    scores = torch.zeros(1, 3, 10, 10)
    scores[0, 0] = 1                        # class 0 wins everywhere ...
    scores[0, 1, 0, :3] = 2                 # ... but 3% of pixels go to class 1 (> 0.1 * 0.2)
    scores[0, 2, 0, 3:4] = 2                # and 1% to class 2 (< 0.1 * 0.2)
    assert predicted_present(scores, alpha, 0.1).tolist() == [[True, True, False]]


def test_layer_loss_and_gradient_match_ccnn_weakloss_on_every_reference_problem():
    with h5py.File(CCNN, "r") as h5:
        for name, problem in h5["problems"].items():
            H, W = int(problem.attrs["H"]), int(problem.attrs["W"])
            f = torch.from_numpy(problem["f"][()]).T.reshape(1, -1, H, W).contiguous()
            P = torch.from_numpy(problem["P"][()]).T.reshape(1, -1, H, W).contiguous()
            x = f.clone().requires_grad_()
            loss = WeakLoss.apply(x, P)
            loss.backward()
            assert abs(loss.item() - float(problem.attrs["loss_weakloss"])) <= 1e-5, name
            grad = torch.from_numpy(problem["grad"][()]).T.reshape(1, -1, H, W)
            np.testing.assert_allclose(x.grad.numpy(), grad.numpy(), atol=1e-7, err_msg=name)


def test_bad_statistics_are_reported(tmp_path):
    param = text_format.Parse('name: "mil" type: "ConstrainedMILLoss" bottom: "s" top: "l" '
                              'constrained_mil_param { class_stats: "absent.json" }',
                              caffe_pb2.LayerParameter())
    with pytest.raises(DatasetError, match="class statistics not found") as missing:
        ConstrainedMILLoss(param, LayerContext(base_dir=tmp_path)).setup([(1, C, 4, 4)])
    assert missing.value.layer == "mil" and str(tmp_path / "absent.json") in str(missing.value)
    with pytest.raises(NetError, match="for 4 classes"):
        make_layer(tmp_path, stats=((0.1,) * 4, (0.2,) * 4, (0.3,) * 4))
    path = tmp_path / "stats.json"
    write_stats(path, (0.1,) * C, (0.2,) * C, (0.3,) * C)
    data = json.loads(path.read_text())
    data["delta"][2] = 0.9                   # delta > gamma
    path.write_text(json.dumps(data))
    param = text_format.Parse('name: "mil" type: "ConstrainedMILLoss" bottom: "s" top: "l" '
                              'constrained_mil_param { class_stats: "stats.json" }',
                              caffe_pb2.LayerParameter())
    with pytest.raises(NetError, match="inconsistent bounds") as err:
        ConstrainedMILLoss(param, LayerContext(base_dir=tmp_path)).setup([(1, C, 4, 4)])
    assert err.value.layer == "mil"
