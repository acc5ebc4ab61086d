"""The custom autograd Functions (where Caffe's backward is not torch's autograd of
the forward): gradchecked in float64 where they are the analytic gradient, and
checked against Caffe's formulas where they deliberately are not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from fcnwild.layers.activation import _PowerFunction
from fcnwild.layers.eltwise import _QuotientProdFunction
from fcnwild.layers.loss import FLT_MIN, _SoftmaxLossFunction
from fcnwild.layers.normalization import _MVNFunction
from layer_testing import make_layer

torch.manual_seed(0)


@pytest.mark.parametrize("power,scale,shift", [
    (2.0, 0.5, 1.0),      # Caffe's power == 2 branch
    (3.0, 1.0, 0.0),      # shift == 0: power * y / x
    (1.5, 0.7, 3.0),      # general: diff_scale * y / (shift + scale * x)
    (1.0, -2.0, 0.3),     # power == 1: constant gradient
    (-0.5, 2.0, 4.0),
])
def test_power_backward_is_the_gradient_away_from_singularities(power, scale, shift) -> None:
    x = (torch.rand(3, 4, dtype=torch.float64) + 0.5).requires_grad_()
    assert gradcheck(lambda t: _PowerFunction.apply(t, power, scale, shift), (x,))


def test_power_with_zero_diff_scale_is_constant_with_zero_gradient() -> None:
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = _PowerFunction.apply(x, 2.0, 0.0, 3.0)
    assert torch.equal(y, torch.full_like(x, 9.0))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_power_follows_caffe_at_a_zero_base() -> None:
    # power 3, shift 0 at x = 0: Caffe computes power * y / x = 0 / 0 (NaN),
    # where the analytic derivative is 0.
    x = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    _PowerFunction.apply(x, 3.0, 1.0, 0.0).sum().backward()
    assert math.isnan(x.grad[0]) and x.grad[1] == pytest.approx(12.0)


def test_quotient_prod_gradcheck_and_caffe_nan_at_zero() -> None:
    bottoms = [(torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_() for _ in range(3)]
    assert gradcheck(_QuotientProdFunction.apply, tuple(bottoms))
    a = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    _QuotientProdFunction.apply(a, b).sum().backward()
    assert math.isnan(a.grad[0])           # y / a = 0 / 0, Caffe's unstable gradient
    assert b.grad[0] == 0.0


def test_stable_prod_gradient_is_the_product_of_the_others() -> None:
    layer = make_layer('name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                       'eltwise_param { operation: PROD }', [(4,)] * 3)
    a, b, c = (torch.tensor([0.0, 1.0, -2.0, 3.0], requires_grad=True) for _ in range(3))
    (y,) = layer(a, b, c)
    y.backward(torch.ones(4))
    assert torch.equal(a.grad, (b * c).detach())


def _softmax_loss_inputs(valid_fraction: float = 0.7):
    scores = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5))
    valid = (torch.rand(2, 5) < valid_fraction).to(torch.float64)
    return scores, labels, valid


def test_softmax_loss_function_gradcheck() -> None:
    scores, labels, valid = _softmax_loss_inputs()
    normalizer = valid.sum().clamp(min=1)
    assert gradcheck(lambda s: _SoftmaxLossFunction.apply(s, labels, valid, normalizer),
                     (scores,))


def test_softmax_loss_gradient_is_prob_minus_onehot_even_below_flt_min() -> None:
    scores = torch.tensor([[[200.0], [0.0], [-200.0]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[2]])
    valid = torch.ones(1, 1, dtype=torch.float64)
    loss = _SoftmaxLossFunction.apply(scores, labels, valid, torch.tensor(1.0, dtype=torch.float64))
    assert float(loss.detach()) == pytest.approx(-math.log(FLT_MIN))   # clamped at FLT_MIN
    loss.backward()
    prob = torch.softmax(scores.detach(), dim=1)
    expected = prob.clone()
    expected[0, 2, 0] -= 1
    assert torch.allclose(scores.grad, expected)
    assert scores.grad[0, 2, 0] == pytest.approx(-1.0)           # not 0 as autograd of the clamp


def test_mvn_backward_is_caffe_formula_and_exact_for_zero_eps() -> None:
    rows = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda r: _MVNFunction.apply(r, 0.0), (rows,))
    # With a large eps, Caffe's formula omits the factor (std + eps) / std.
    eps = 0.5
    x = rows.detach().numpy()
    dy = np.random.default_rng(1).standard_normal(x.shape)
    centred = x - x.mean(1, keepdims=True)
    denom = np.sqrt((centred ** 2).mean(1, keepdims=True)) + eps
    y = centred / denom
    caffe = (dy - dy.mean(1, keepdims=True) - y * (dy * y).mean(1, keepdims=True)) / denom
    r = rows.detach().clone().requires_grad_()
    _MVNFunction.apply(r, eps).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(r.grad.numpy(), caffe, rtol=1e-12, atol=1e-12)


def test_python_layer_backward_goes_through_its_backward_method(tmp_path) -> None:
    (tmp_path / "twice_layer.py").write_text(
        "class Twice:\n"
        "    def __init__(self, param):\n"
        "        self.param = param\n"
        "    def setup(self, bottom, top):\n"
        "        self.factor = float(self.param_str)\n"
        "    def reshape(self, bottom, top):\n"
        "        top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top):\n"
        "        top[0].data[...] = self.factor * bottom[0].data ** 2\n"
        "    def backward(self, top, propagate_down, bottom):\n"
        "        if propagate_down[0]:\n"
        "            bottom[0].diff[...] = 2 * self.factor * bottom[0].data * top[0].diff\n")
    layer = make_layer('name: "py" type: "Python" bottom: "x" top: "y" python_param { '
                       'module: "twice_layer" layer: "Twice" param_str: "3" }', [(2, 3)],
                       base_dir=tmp_path, allow_python=True)
    assert layer.reshape([(2, 3)]) == [(2, 3)]
    x = torch.randn(2, 3, requires_grad=True)
    (y,) = layer(x)
    assert torch.allclose(y, 3 * x.detach() ** 2)
    dy = torch.randn(2, 3)
    y.backward(dy)
    assert torch.allclose(x.grad, 6 * x.detach() * dy)
    assert gradcheck(lambda t: layer(t)[0],
                     (torch.rand(2, 3, dtype=torch.float64, requires_grad=True),),
                     eps=1e-3, atol=1e-3)       # the layer computes in float32, as pycaffe
