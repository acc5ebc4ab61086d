"""Layer behaviour the Caffe fixtures do not record, checked against Caffe's
formulas written out independently (numpy or plain torch arithmetic)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layer_testing import make_layer

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.fillers import fill


def one(type_and_params: str, shapes, **kw):
    bottoms = "".join(f' bottom: "b{i}"' for i in range(len(shapes)))
    return make_layer(f'name: "l" type: {type_and_params.split(" ", 1)[0]}{bottoms} top: "t" '
                      + (type_and_params.split(" ", 1)[1] if " " in type_and_params else ""),
                      shapes, **kw)


# --- activations ---------------------------------------------------------------------------
def test_relu_in_place_matches_out_of_place_forward_and_backward() -> None:
    for slope in (0.0, 0.1):
        layer = one(f'"ReLU" relu_param {{ negative_slope: {slope} }}', [(2, 5)])
        x = torch.tensor([[-2.0, -0.0, 0.0, 0.5, 3.0]] * 2)
        x.requires_grad_()
        (y,) = layer(x)
        dy = torch.arange(10.0).reshape(2, 5)
        y.backward(dy)
        blob, grad = x.detach().clone(), dy.clone()
        layer.forward_inplace(blob)
        layer.backward_inplace(grad)
        assert torch.equal(blob, y.detach()) and torch.equal(grad, x.grad)
        # Caffe: the gradient at x == 0 uses the negative slope
        assert x.grad[0, 1] == slope * dy[0, 1]


def test_prelu_shared_slope_is_a_scalar_blob_with_caffe_gradients() -> None:
    layer = one('"PReLU" prelu_param { channel_shared: true }', [(2, 3, 2)])
    assert layer.blobs[0].shape == () and float(layer.blobs[0].detach()) == 0.25
    per_channel = one('"PReLU"', [(2, 3, 2)])
    assert per_channel.blobs[0].shape == (3,)
    x = torch.randn(2, 3, 2, requires_grad=True)
    with torch.no_grad():
        per_channel.blobs[0].copy_(torch.tensor([0.1, -0.2, 0.3]))
    (y,) = per_channel(x)
    dy = torch.randn(2, 3, 2)
    y.backward(dy)
    a = torch.tensor([0.1, -0.2, 0.3])[None, :, None]
    xd = x.detach()
    assert torch.allclose(y, torch.clamp(xd, min=0) + a * torch.clamp(xd, max=0))
    assert torch.allclose(x.grad, dy * torch.where(xd > 0, 1.0, a))
    assert torch.allclose(per_channel.blobs[0].grad, (dy * xd * (xd <= 0)).sum(dim=(0, 2)))


def test_elementwise_activations_match_caffe_formulas() -> None:
    x = torch.tensor([-60.0, -3.0, -0.5, 0.0, 0.7, 2.0, 55.0], dtype=torch.float64,
                     requires_grad=True)
    xd = x.detach()
    cases = {
        '"ELU" elu_param { alpha: 0.5 }':
            (torch.where(xd > 0, xd, 0.5 * (torch.exp(xd) - 1)),
             lambda y: torch.where(xd > 0, 1.0, y + 0.5)),
        '"BNLL"':
            (torch.where(xd > 0, xd + torch.log1p(torch.exp(-xd)), torch.log1p(torch.exp(xd))),
             lambda y: torch.sigmoid(xd.clamp(max=50))),
        '"Exp" exp_param { base: 2 scale: 0.5 shift: 1 }':
            (2 ** (1 + 0.5 * xd), lambda y: y * math.log(2) * 0.5),
        '"Swish" swish_param { beta: 1.5 }':
            (xd * torch.sigmoid(1.5 * xd),
             lambda y: 1.5 * y + torch.sigmoid(1.5 * xd) * (1 - 1.5 * y)),
        '"Clip" clip_param { min: -0.5 max: 2 }':
            (xd.clamp(-0.5, 2), lambda y: ((xd >= -0.5) & (xd <= 2)).double()),
        '"AbsVal"': (xd.abs(), lambda y: torch.sign(xd)),
        '"TanH"': (torch.tanh(xd), lambda y: 1 - y * y),
        '"Sigmoid"': (torch.sigmoid(xd), lambda y: y * (1 - y)),
    }
    for text, (expected, derivative) in cases.items():
        layer = one(text, [x.shape]).double()
        x.grad = None
        (y,) = layer(x)
        assert torch.allclose(y, expected, rtol=1e-12), text
        y.backward(torch.ones_like(y))
        assert torch.allclose(x.grad, derivative(expected), rtol=1e-12, atol=1e-15), text


def test_log_with_base_and_threshold_without_gradient() -> None:
    x = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    (y,) = one('"Log" log_param { base: 10 scale: 2 shift: 1 }', [(3,)])(x)
    assert torch.allclose(y, torch.log10(1 + 2 * x.detach()))
    y.sum().backward()
    assert torch.allclose(x.grad, 2 / ((1 + 2 * x.detach()) * math.log(10)))
    (t,) = one('"Threshold" threshold_param { threshold: 1 }', [(3,)])(x)
    assert t.tolist() == [0.0, 0.0, 1.0] and not t.requires_grad


# --- dropout ---------------------------------------------------------------------------------
def test_dropout_uses_a_given_mask_once_then_draws_scaled_masks() -> None:
    layer = one('"Dropout" dropout_param { dropout_ratio: 0.25 }', [(4, 1000)])
    x = torch.randn(4, 1000, requires_grad=True)
    mask = (torch.rand(4, 1000) > 0.25).float() / 0.75
    layer.set_next_mask(mask)
    (y,) = layer(x)
    assert torch.equal(y, x.detach() * mask)
    dy = torch.randn(4, 1000)
    y.backward(dy)
    assert torch.equal(x.grad, dy * mask)
    (y2,) = layer(x)
    ratio = y2 / x.detach()
    kept = ratio != 0
    assert torch.allclose(ratio[kept], torch.tensor(1 / 0.75))
    assert abs(float((ratio == 0).float().mean()) - 0.25) < 0.03
    assert not torch.equal(y2, y)


def test_dropout_in_place_and_test_phase() -> None:
    layer = one('"Dropout" dropout_param { dropout_ratio: 0.5 }', [(2, 6)])
    mask = torch.tensor([[0.0, 2.0] * 3] * 2)
    layer.set_next_mask(mask)
    blob, grad = torch.ones(2, 6), torch.full((2, 6), 3.0)
    layer.forward_inplace(blob)
    layer.backward_inplace(grad)
    assert torch.equal(blob, mask) and torch.equal(grad, 3 * mask)
    test_layer = one('"Dropout"', [(2, 6)], phase=caffe_pb2.TEST)
    x = torch.randn(2, 6)
    (y,) = test_layer(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


# --- convolution / inner product ---------------------------------------------------------------
def test_convolution_channel_axis_2_and_1d_and_shared_weights_for_two_bottoms() -> None:
    layer = make_layer('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" '
                       'top: "yb" convolution_param { num_output: 4 kernel_size: 3 stride: 2 '
                       'pad: 1 axis: 2 weight_filler { type: "gaussian" std: 1 } '
                       'bias_filler { type: "uniform" } }', [(2, 3, 5, 9), (2, 3, 5, 9)])
    a, b = torch.randn(2, 3, 5, 9), torch.randn(2, 3, 5, 9)
    ya, yb = layer(a, b)
    assert layer.reshape([a.shape, b.shape]) == [(2, 3, 4, 5)] * 2
    w, bias = layer.blobs[0].detach(), layer.blobs[1].detach()
    assert w.shape == (4, 5, 3)
    xp = F.pad(a.reshape(6, 5, 9), (1, 1))
    ref = torch.stack([sum((xp[:, :, 2 * o + t] [:, :, None] * w[:, :, t].T[None]).sum(1)
                           for t in range(3)) + bias for o in range(5)], dim=-1)
    assert torch.allclose(ya, ref.reshape(2, 3, 4, 5), atol=1e-5)
    assert not torch.allclose(ya, yb)


def test_deconvolution_output_size_and_3d() -> None:
    layer = make_layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param '
                       '{ num_output: 2 kernel_size: 4 kernel_size: 3 kernel_size: 2 stride: 2 '
                       'pad: 1 dilation: 2 weight_filler { type: "msra" } }', [(1, 3, 4, 5, 6)])
    assert layer.blobs[0].shape == (3, 2, 4, 3, 2)
    # stride * (in - 1) + dilation * (k - 1) + 1 - 2 * pad
    expected = tuple(2 * (n - 1) + 2 * (k - 1) + 1 - 2 for n, k in ((4, 4), (5, 3), (6, 2)))
    assert layer.reshape([(1, 3, 4, 5, 6)]) == [(1, 2) + expected]
    assert layer(torch.randn(1, 3, 4, 5, 6))[0].shape == (1, 2) + expected


def test_inner_product_transpose_weights_and_float64() -> None:
    layer = one('"InnerProduct" inner_product_param { num_output: 3 transpose: true '
                'weight_filler { type: "uniform" } bias_filler { type: "constant" value: 1 } }',
                [(2, 4, 2)]).double()
    assert layer.blobs[0].shape == (8, 3)
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    (y,) = layer(x)
    assert torch.allclose(y, x.reshape(2, 8) @ layer.blobs[0].detach() + 1)


# --- shapes ------------------------------------------------------------------------------------
def test_split_shares_data_and_sums_diffs_without_touching_the_top_diffs() -> None:
    layer = make_layer('name: "s" type: "Split" bottom: "x" top: "a" top: "b"', [(3,)])
    x = torch.randn(3, requires_grad=True)
    a, b = layer(x)
    assert a.data_ptr() == b.data_ptr() == x.data_ptr()
    da, db = torch.ones(3), torch.full((3,), 2.0)
    torch.autograd.backward([a, b], [da, db], inputs=[x])
    assert torch.equal(x.grad, torch.full((3,), 3.0))
    assert torch.equal(da, torch.ones(3)) and torch.equal(db, torch.full((3,), 2.0))


def test_flatten_tile_reduction_silence() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    flat = one('"Flatten" flatten_param { axis: 1 end_axis: -2 }', [x.shape])
    assert flat(x)[0].shape == (2, 12, 5) == flat.reshape([x.shape])[0]
    tile = one('"Tile" tile_param { axis: 1 tiles: 2 }', [x.shape])
    (t,) = tile(x)
    assert torch.equal(t, torch.cat([x, x], dim=1))
    for op, coeff, value, grad in [
        ("SUM", 2.0, lambda v: 2 * v.sum(-1), lambda v: torch.full_like(v, 2.0)),
        ("ASUM", 1.0, lambda v: v.abs().sum(-1), lambda v: torch.sign(v)),
        ("SUMSQ", -1.0, lambda v: -(v * v).sum(-1), lambda v: -2 * v),
        ("MEAN", 3.0, lambda v: 3 * v.mean(-1), lambda v: torch.full_like(v, 3.0 / 20)),
    ]:
        layer = one(f'"Reduction" reduction_param {{ operation: {op} axis: 2 coeff: {coeff} }}',
                    [x.shape])
        x.grad = None
        (y,) = layer(x)
        assert layer.reshape([x.shape]) == [(2, 3)]
        rows = x.detach().reshape(2, 3, 20)
        assert torch.allclose(y, value(rows)), op
        y.sum().backward()
        assert torch.allclose(x.grad.reshape(2, 3, 20), grad(rows)), op
    scalar = one('"Reduction"', [x.shape])
    assert scalar(x)[0].shape == () == scalar.reshape([x.shape])[0]
    silence = make_layer('name: "s" type: "Silence" bottom: "a" bottom: "b"', [(1,), (2,)])
    assert silence(torch.zeros(1), torch.zeros(2)) == () and silence.reshape([(1,), (2,)]) == []


def test_reshape_axis_and_num_axes() -> None:
    layer = one('"Reshape" reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 2 }',
                [(3, 4, 5, 6)])
    assert layer.reshape([(3, 4, 5, 6)]) == [(3, 2, 10, 6)]
    end = one('"Reshape" reshape_param { shape { dim: 1 } axis: -1 }', [(3, 4)])
    assert end(torch.zeros(3, 4))[0].shape == (3, 4, 1)


def test_concat_and_slice_legacy_dims() -> None:
    cat = make_layer('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" '
                     'concat_param { concat_dim: 0 }', [(1, 2), (3, 2)])
    assert cat.reshape([(1, 2), (3, 2)]) == [(4, 2)]
    sl = make_layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" '
                    'slice_param { slice_dim: 0 slice_point: 1 }', [(4, 2)])
    a, b = sl(torch.arange(8.0).reshape(4, 2))
    assert a.shape == (1, 2) and b.shape == (3, 2)


# --- eltwise ------------------------------------------------------------------------------------
def test_eltwise_max_tie_routing_as_caffe() -> None:
    layer = make_layer('name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                       'eltwise_param { operation: MAX }', [(3,)] * 3)
    a = torch.tensor([1.0, 2.0, 0.0], requires_grad=True)
    b = torch.tensor([1.0, 0.0, 0.0], requires_grad=True)
    c = torch.tensor([0.0, 2.0, 5.0], requires_grad=True)
    (y,) = layer(a, b, c)
    y.sum().backward()
    # tie a == b -> b (Caffe's else-branch); tie with c later -> earlier winner keeps it
    assert a.grad.tolist() == [0.0, 1.0, 0.0]
    assert b.grad.tolist() == [1.0, 0.0, 0.0]
    assert c.grad.tolist() == [0.0, 0.0, 1.0]


# --- normalization ------------------------------------------------------------------------------
def test_scale_with_second_bottom_and_bias_has_only_the_bias_blob() -> None:
    layer = make_layer('name: "s" type: "Scale" bottom: "x" bottom: "g" top: "y" scale_param '
                       '{ axis: 1 bias_term: true bias_filler { type: "constant" value: 0.5 } }',
                       [(2, 3, 4), (3,)])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3,)
    x, g = torch.randn(2, 3, 4), torch.randn(3, requires_grad=True)
    (y,) = layer(x, g)
    assert torch.allclose(y, x * g.detach()[None, :, None] + 0.5)
    y.sum().backward()
    assert torch.allclose(g.grad, x.sum(dim=(0, 2)))


def test_scale_scalar_and_bias_layer() -> None:
    scalar = one('"Scale" scale_param { num_axes: 0 filler { type: "constant" value: 3 } }',
                 [(2, 3)])
    assert scalar.blobs[0].shape == ()
    assert torch.equal(scalar(torch.ones(2, 3))[0], torch.full((2, 3), 3.0))
    trailing = one('"Bias" bias_param { axis: -2 num_axes: -1 filler { type: "constant" '
                   'value: 2 } }', [(2, 3, 4)])
    assert trailing.blobs[0].shape == (3, 4)
    assert torch.equal(trailing(torch.zeros(2, 3, 4))[0], torch.full((2, 3, 4), 2.0))


def test_batch_norm_statistics_update_and_zero_scale_factor() -> None:
    layer = one('"BatchNorm" batch_norm_param { moving_average_fraction: 0.5 eps: 0 }',
                [(4, 2, 3)])
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    assert all(not b.requires_grad for b in layer.blobs)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    layer.double()
    (y,) = layer(x)
    mean = x.mean(dim=(0, 2))
    var = x.var(dim=(0, 2), unbiased=False)
    assert torch.allclose(y, (x - mean[None, :, None]) / var.sqrt()[None, :, None])
    assert torch.allclose(layer.blobs[0], mean) and torch.allclose(layer.blobs[1], var * 12 / 11)
    assert float(layer.blobs[2]) == 1.0
    layer(x)
    assert float(layer.blobs[2]) == 1.5 and torch.allclose(layer.blobs[0], 1.5 * mean)
    test = one('"BatchNorm" batch_norm_param { eps: 0.25 }', [(1, 2)], phase=caffe_pb2.TEST)
    with torch.no_grad():
        test.blobs[0].fill_(7.0)
    # scale factor 0: Caffe uses zero mean and variance
    assert torch.allclose(test(torch.ones(1, 2))[0], torch.full((1, 2), 2.0))


def test_lrn_within_channel_ignores_k() -> None:
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    k1 = one('"LRN" lrn_param { local_size: 3 alpha: 2 beta: 0.5 k: 1 norm_region: '
             'WITHIN_CHANNEL }', [x.shape]).double()
    k9 = one('"LRN" lrn_param { local_size: 3 alpha: 2 beta: 0.5 k: 9 norm_region: '
             'WITHIN_CHANNEL }', [x.shape]).double()
    assert torch.equal(k1(x)[0], k9(x)[0])


def test_mvn_variants() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    (y,) = one('"MVN" mvn_param { normalize_variance: false }', [x.shape])(x)
    assert torch.allclose(y, x - x.mean(dim=2, keepdim=True))
    (z,) = one('"MVN" mvn_param { across_channels: true eps: 0.1 }', [x.shape])(x)
    c = x - x.mean(dim=(1, 2), keepdim=True)
    std = (c * c).mean(dim=(1, 2), keepdim=True).sqrt()
    assert torch.allclose(z, c / (std + 0.1))


# --- metrics ------------------------------------------------------------------------------------
def test_argmax_ties_put_the_higher_index_first() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    (flat,) = one('"ArgMax" argmax_param { out_max_val: true top_k: 3 }', [x.shape])(x)
    assert flat.shape == (1, 2, 3) and flat.tolist() == [[[2.0, 0.0, 3.0], [3.0, 3.0, 2.0]]]
    y = torch.tensor([[[1.0, 5.0], [4.0, 5.0], [4.0, 0.0]]])      # (1, 3, 2): axis 1
    (idx,) = one('"ArgMax" argmax_param { axis: 1 }', [y.shape])(y)
    (val,) = one('"ArgMax" argmax_param { axis: -2 out_max_val: true top_k: 2 }', [y.shape])(y)
    assert idx.tolist() == [[[2.0, 1.0]]]
    assert val.tolist() == [[[4.0, 5.0], [4.0, 5.0]]]


def test_accuracy_ties_count_against_and_per_class() -> None:
    layer = make_layer('name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" '
                       'top: "cls" accuracy_param { ignore_label: -1 }', [(4, 3), (4,)])
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0.0, 1.0, 2.0, -1.0])
    acc, per_class = layer(scores, labels)
    assert float(acc) == pytest.approx(1 / 3)        # tie at sample 0 is a miss
    assert per_class.tolist() == [0.0, 1.0, 0.0]
    top2 = make_layer('name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" '
                      'accuracy_param { top_k: 2 }', [(4, 3), (4,)])
    assert float(top2(scores, labels.clamp(min=0))[0]) == pytest.approx(0.5)


# --- losses -------------------------------------------------------------------------------------
def _sigmoid_ce_reference(x, t, valid, normalizer):
    per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    return (per * valid).sum() / normalizer, (1 / (1 + np.exp(-x)) - t) * valid / normalizer


@pytest.mark.parametrize("loss_param,norm", [
    ("", lambda valid, n, total: n),                               # BATCH_SIZE by default
    ("normalization: VALID", lambda valid, n, total: valid.sum()),
    ("normalization: FULL", lambda valid, n, total: total),
    ("normalization: NONE", lambda valid, n, total: 1.0),
    ("normalize: true", lambda valid, n, total: valid.sum()),
])
def test_sigmoid_cross_entropy_normalizations(loss_param, norm) -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1, 0, -1, 1], [0, 0, 1, 1], [1, -1, 0, 0]], dtype=torch.float64)
    layer = make_layer('name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" '
                       f'top: "loss" loss_param {{ ignore_label: -1 {loss_param} }}',
                       [x.shape, t.shape])
    assert layer.reshape([x.shape, t.shape]) == [()]
    (loss,) = layer(x, t)
    loss.backward()
    valid = (t != -1).double().numpy()
    ref, grad = _sigmoid_ce_reference(x.detach().numpy(), t.numpy(), valid,
                                      max(1.0, norm(valid, 3, 12)))
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-12, atol=1e-15)


def test_softmax_loss_axis_legacy_normalize_and_all_ignored() -> None:
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)   # classes on axis 2
    labels = torch.tensor([[0.0, 3.0, 255.0], [1.0, 2.0, 255.0]])
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                       'softmax_param { axis: 2 } loss_param { ignore_label: 255 normalize: true }',
                       [scores.shape, labels.shape])
    (loss,) = layer(scores, labels)
    logp = torch.log_softmax(scores.detach(), dim=2)
    picks = [logp[0, 0, 0], logp[0, 1, 3], logp[1, 0, 1], logp[1, 1, 2]]
    assert float(loss.detach()) == pytest.approx(-float(sum(picks)) / 4)    # VALID: 4 labels
    ignored = torch.full_like(labels, 255.0)
    (zero,) = layer(scores, ignored)
    zero.backward()
    assert float(zero.detach()) == 0.0 and not scores.grad.any()          # normalizer >= 1


def test_multinomial_logistic_and_hinge_losses() -> None:
    prob = torch.tensor([[0.2, 0.8], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    label = torch.tensor([1.0, 0.0])
    (loss,) = make_layer('name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "l" '
                         'top: "loss"', [prob.shape, label.shape])(prob, label)
    assert float(loss.detach()) == pytest.approx(-(math.log(0.8) + math.log(1e-20)) / 2)
    loss.backward()
    np.testing.assert_allclose(prob.grad.numpy(), [[0, -1 / (0.8 * 2)], [-1 / (1e-20 * 2), 0]])
    x = torch.tensor([[0.5, -2.0, 0.0], [1.5, 0.3, -1.0]], dtype=torch.float64,
                     requires_grad=True)
    hinge_label = torch.tensor([1.0, 0.0])
    for norm, power in (("L1", 1), ("L2", 2)):
        x.grad = None
        (h,) = make_layer('name: "h" type: "HingeLoss" bottom: "x" bottom: "l" top: "loss" '
                          f'hinge_loss_param {{ norm: {norm} }}', [x.shape, (2,)])(x, hinge_label)
        sign = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]], dtype=torch.float64)
        margin = torch.clamp(1 + sign * x.detach(), min=0)
        assert float(h.detach()) == pytest.approx(float((margin ** power).sum() / 2))
        h.backward()
        expected = sign * (margin > 0) / 2 if power == 1 else sign * margin
        assert torch.allclose(x.grad, expected)


# --- fillers ------------------------------------------------------------------------------------
def _filler(text: str) -> caffe_pb2.FillerParameter:
    from google.protobuf import text_format
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def _err(message: str) -> NetError:
    return NetError(message)


def test_fillers_statistics_and_fans() -> None:
    torch.manual_seed(0)
    shape = (64, 32, 3, 3)                     # fan_in 288, fan_out 576
    for norm, n in (("FAN_IN", 288), ("FAN_OUT", 576), ("AVERAGE", 432)):
        xavier = fill(_filler(f'type: "xavier" variance_norm: {norm}'), shape, _err)
        bound = math.sqrt(3 / n)
        assert float(xavier.abs().max()) <= bound and float(xavier.abs().max()) > 0.95 * bound
        msra = fill(_filler(f'type: "msra" variance_norm: {norm}'), shape, _err)
        assert float(msra.std()) == pytest.approx(math.sqrt(2 / n), rel=0.05)
    sparse = fill(_filler('type: "gaussian" std: 1 sparse: 16'), shape, _err)
    assert float((sparse != 0).float().mean()) == pytest.approx(16 / 64, abs=0.02)
    ball = fill(_filler('type: "positive_unitball"'), (5, 4, 3), _err)
    assert bool((ball >= 0).all()) and torch.allclose(ball.sum(dim=(1, 2)), torch.ones(5))
    uniform = fill(_filler('type: "uniform" min: -2 max: -1'), (1000,), _err)
    assert float(uniform.min()) >= -2 and float(uniform.max()) < -1


def test_bilinear_filler_odd_kernel_is_symmetric() -> None:
    kernel = fill(_filler('type: "bilinear"'), (1, 1, 3, 3), _err)[0, 0]
    profile = torch.tensor([0.25, 0.5, 0.25]) * 2
    assert torch.equal(kernel, profile[:, None] * profile[None, :])


# --- python ---------------------------------------------------------------------------------
def test_python_layer_without_tops_sees_its_bottoms_param_str_and_phase(tmp_path) -> None:
    (tmp_path / "recorder_layer.py").write_text(
        "seen = []\n"
        "class Recorder:\n"
        "    def __init__(self, param):\n"
        "        pass\n"
        "    def setup(self, bottom, top):\n"
        "        seen.append(('setup', self.param_str, self.phase, bottom[0].shape))\n"
        "    def reshape(self, bottom, top):\n"
        "        pass\n"
        "    def forward(self, bottom, top):\n"
        "        seen.append(('forward', float(bottom[0].data.sum())))\n")
    layer = make_layer('name: "py" type: "Python" bottom: "x" python_param { '
                       'module: "recorder_layer" layer: "Recorder" param_str: "hello" }',
                       [(2, 2)], base_dir=tmp_path, allow_python=True, phase=caffe_pb2.TEST)
    assert layer(torch.ones(2, 2)) == () and layer.reshape([(2, 2)]) == []
    import recorder_layer
    assert recorder_layer.seen == [("setup", "hello", caffe_pb2.TEST, (2, 2)), ("forward", 4.0)]
