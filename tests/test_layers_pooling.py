"""Pooling against a direct transcription of Caffe's loops (pooling_layer.cpp), on
geometries the fixtures do not cover, plus STOCHASTIC pooling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from layer_testing import make_layer

from fcnwild.base import caffe_pb2


def caffe_pool(x: np.ndarray, k, s, p, method: str, ceil: bool = True):
    """Caffe's Reshape + Forward_cpu for MAX (value, mask) and AVE, written as loops."""
    n, c, h, w = x.shape
    rnd = math.ceil if ceil else math.floor
    out = [int(rnd((size + 2 * pp - kk) / ss)) + 1 for size, kk, ss, pp in zip((h, w), k, s, p)]
    if p[0] or p[1]:
        out = [o - 1 if (o - 1) * ss >= size + pp else o
               for o, ss, size, pp in zip(out, s, (h, w), p)]
    top = np.zeros((n, c, out[0], out[1]))
    mask = -np.ones_like(top)
    for i in range(out[0]):
        for j in range(out[1]):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            if method == "AVE":
                top[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
                continue
            top[:, :, i, j] = -np.inf
            for hh in range(hs, he):
                for ww in range(ws, we):
                    better = x[:, :, hh, ww] > top[:, :, i, j]
                    top[:, :, i, j] = np.where(better, x[:, :, hh, ww], top[:, :, i, j])
                    mask[:, :, i, j] = np.where(better, hh * w + ww, mask[:, :, i, j])
    return top, mask


GEOMETRIES = [
    # kernel, stride, pad, bottom H x W
    ((3, 3), (2, 2), (2, 2), (9, 10)),
    ((4, 2), (3, 1), (3, 1), (11, 7)),
    ((2, 3), (2, 3), (1, 0), (8, 9)),     # padded H only: Caffe still clips W
    ((5, 5), (1, 1), (4, 4), (3, 4)),     # kernel larger than the bottom
    ((3, 3), (3, 3), (0, 0), (10, 10)),
]


@pytest.mark.parametrize("kernel,stride,pad,hw", GEOMETRIES)
@pytest.mark.parametrize("ceil", [True, False], ids=["ceil", "floor"])
def test_max_and_ave_match_caffe_loops(kernel, stride, pad, hw, ceil) -> None:
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    geometry = (f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
                f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} "
                f"round_mode: {'CEIL' if ceil else 'FLOOR'}")
    max_layer = make_layer(f'name: "m" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                           f'pooling_param {{ pool: MAX {geometry} }}', [x.shape])
    ave_layer = make_layer(f'name: "a" type: "Pooling" bottom: "x" top: "y" '
                           f'pooling_param {{ pool: AVE {geometry} }}', [x.shape])
    ref_max, ref_mask = caffe_pool(x.numpy(), kernel, stride, pad, "MAX", ceil)
    ref_ave, _ = caffe_pool(x.numpy(), kernel, stride, pad, "AVE", ceil)
    y, mask = max_layer(x)
    assert max_layer.reshape([x.shape]) == [ref_max.shape, ref_max.shape]
    np.testing.assert_array_equal(y.numpy(), ref_max)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    np.testing.assert_allclose(ave_layer(x)[0].numpy(), ref_ave, rtol=1e-12)


def test_max_gradient_goes_to_the_first_of_tied_maxima() -> None:
    layer = make_layer('name: "m" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                       'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }',
                       [(1, 1, 3, 3)])
    x = torch.tensor([[[[1.0, 5.0, 5.0], [5.0, 5.0, 0.0], [2.0, 2.0, 2.0]]]], requires_grad=True)
    y, mask = layer(x)
    y.sum().backward()
    # windows start at -1: (0,0) | (0,1..2) / (1..2,0) | (1..2,1..2)
    assert mask.flatten().tolist() == [0, 1, 3, 4]
    expected = torch.zeros(9)
    expected[[0, 1, 3, 4]] = 1
    assert torch.equal(x.grad.flatten(), expected)
    assert not mask.requires_grad


def _stochastic(phase, shape=(1, 1, 4, 4), extra=""):
    return make_layer('name: "s" type: "Pooling" bottom: "x" top: "y" pooling_param '
                      f'{{ pool: STOCHASTIC kernel_size: 2 stride: 2 {extra} }}', [shape],
                      phase=phase)


def test_stochastic_test_phase_is_the_value_weighted_average() -> None:
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    (y,) = _stochastic(caffe_pb2.TEST, x.shape)(x)
    assert y.shape == (2, 3, 3, 3)      # ceil: the last window holds one row/column
    x_np = x.numpy()
    for i in range(3):
        for j in range(3):
            win = x_np[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            ref = (win ** 2).sum(axis=(2, 3)) / (win.sum(axis=(2, 3)) + 1.1754943508222875e-38)
            np.testing.assert_allclose(y[:, :, i, j].numpy(), ref, rtol=1e-12)


def test_stochastic_train_samples_in_proportion_and_routes_the_gradient() -> None:
    torch.manual_seed(0)
    layer = _stochastic(caffe_pb2.TRAIN, (1, 1, 2, 2))
    window = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]]]])
    draws = torch.stack([layer(window)[0].flatten() for _ in range(4000)])
    assert set(draws.unique().tolist()) <= {1.0, 3.0}
    assert abs(float((draws == 3.0).float().mean()) - 0.75) < 0.03
    x = torch.rand(1, 2, 4, 4, requires_grad=True)
    (y,) = _stochastic(caffe_pb2.TRAIN, x.shape)(x)
    y.sum().backward()
    per_window = x.grad.unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))
    assert torch.equal(per_window, torch.ones(1, 2, 2, 2))       # one element per window
    picked = x.detach()[x.grad.bool()]
    assert torch.equal(picked.sort().values, y.detach().flatten().sort().values)
