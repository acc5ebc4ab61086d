"""conv_ops: every fast path against torch's own convolution, and the dispatcher."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from caffe_fixture import assert_close

from fcnwild.layers import conv_ops
from fcnwild.nets.reference import Tolerance

FLOAT64_TOL = Tolerance(1e-10, 0.0)
FLOAT32_FORWARD_TOL = Tolerance(1e-5, 1e-7)
FLOAT32_BACKWARD_TOL = Tolerance(1e-4, 1e-7)


def _native(transposed: bool):
    return conv_ops.DECONV_PATHS["native"] if transposed else conv_ops.CONV_PATHS["native"]


def _forward_backward(fn, x: Tensor, w: Tensor, b: Tensor | None, args: tuple, gy_seed: int = 7):
    """(y, dx, dw, db) of fn with a fixed random output grad."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = fn(x, w, b, *args)
    gen = torch.Generator().manual_seed(gy_seed)
    y.backward(torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype))
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


def _assert_close(ours: Tensor, ref: Tensor, tol: Tolerance, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert_close(ours, ref, "conv path", tol, name=what)


def _check_path(path: str, transposed: bool, x: Tensor, w: Tensor, b: Tensor | None, args: tuple,
                dtype: torch.dtype) -> None:
    """The path's forward and three grads against float64 torch, in ``dtype``."""
    paths = conv_ops.DECONV_PATHS if transposed else conv_ops.CONV_PATHS
    ref = _forward_backward(_native(transposed), x.double(), w.double(),
                            None if b is None else b.double(), args)
    ours = _forward_backward(paths[path], x.to(dtype), w.to(dtype), None if b is None else b.to(dtype), args)
    for i, (name, o, r) in enumerate(zip(("y", "dx", "dw", "db"), ours, ref)):
        if r is None:
            assert o is None
            continue
        assert o.dtype == dtype
        if dtype == torch.float64:
            tol = FLOAT64_TOL
        else:
            tol = FLOAT32_FORWARD_TOL if i == 0 else FLOAT32_BACKWARD_TOL
        _assert_close(o, r, tol, f"{path} {'deconv' if transposed else 'conv'} {name} {args}")


# --- random cases ----------------------------------------------------------------------

def _winograd_cases(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        dil = (rng.randint(1, 4), rng.randint(1, 4))
        pad = (rng.randint(0, 3), rng.randint(0, 3))
        size = tuple(rng.randint(max(1, 2 * d - 2 * p + 1), 2 * d + 14) for d, p in zip(dil, pad))
        cases.append(dict(n=rng.randint(1, 3), c_in=rng.randint(1, 6), c_out=rng.randint(1, 6),
                          kernel=(3, 3), size=size, stride=(1, 1), pad=pad, dilation=dil, groups=1,
                          bias=rng.random() < 0.7))
    return cases


def _gemm_cases(count: int, seed: int, transposed: bool) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        g = rng.choice([1, 1, 2, 3])
        kernel = (rng.choice([1, 2, 3, 5, 7]), rng.choice([1, 3, 4]))
        dil = (rng.randint(1, 4), rng.randint(1, 3))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        pad = (rng.randint(0, 3), rng.randint(0, 2))
        if transposed:
            size = (rng.randint(1, 9), rng.randint(1, 9))
            out = [(s - 1) * st - 2 * p + d * (k - 1) + 1 for s, st, p, d, k in zip(size, stride, pad, dil, kernel)]
        else:
            size = tuple(rng.randint(1, 15) + d * (k - 1) for d, k in zip(dil, kernel))
            out = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, st, p, d, k in zip(size, stride, pad, dil, kernel)]
        if min(out) < 1:
            continue
        cases.append(dict(n=rng.randint(1, 3), c_in=g * rng.randint(1, 4), c_out=g * rng.randint(1, 4),
                          kernel=kernel, size=size, stride=stride, pad=pad, dilation=dil, groups=g,
                          bias=rng.random() < 0.7))
    return cases


def _tensors(case: dict, transposed: bool, seed: int) -> tuple[Tensor, Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((case["n"], case["c_in"]) + tuple(case["size"]), generator=gen, dtype=torch.float64)
    g = case["groups"]
    shape = ((case["c_in"], case["c_out"] // g) if transposed else (case["c_out"], case["c_in"] // g))
    w = torch.randn(shape + tuple(case["kernel"]), generator=gen, dtype=torch.float64)
    b = torch.randn(case["c_out"], generator=gen, dtype=torch.float64) if case["bias"] else None
    return x, w, b


def _args(case: dict) -> tuple:
    return (case["stride"], case["pad"], case["dilation"], case["groups"])


WINOGRAD_CASES = _winograd_cases(12, seed=1)
GEMM_CONV_CASES = _gemm_cases(12, seed=2, transposed=False)
GEMM_DECONV_CASES = _gemm_cases(12, seed=3, transposed=True)
WINOGRAD_DECONV_CASES = [dict(c, pad=(p, q)) for c, (p, q) in
                         zip(_winograd_cases(6, seed=4), [(0, 0), (1, 2), (2, 5), (3, 1), (9, 0), (4, 4)])]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path,transposed,cases", [
    ("winograd", False, WINOGRAD_CASES),
    ("gemm", False, GEMM_CONV_CASES),
    ("gemm", True, GEMM_DECONV_CASES),
    ("winograd", True, WINOGRAD_DECONV_CASES),
], ids=["winograd-conv", "gemm-conv", "gemm-deconv", "winograd-deconv"])
def test_fast_path_matches_torch(path: str, transposed: bool, cases: list[dict], dtype: torch.dtype) -> None:
    for i, case in enumerate(cases):
        if transposed and path == "winograd":
            # The deconvolution's output must exist: size - 1 - 2 * pad + 2 * dilation >= 1.
            case = dict(case, size=tuple(max(s, 2 * p - 2 * d + 2) for s, p, d in
                                         zip(case["size"], case["pad"], case["dilation"])))
        x, w, b = _tensors(case, transposed, seed=100 + i)
        _check_path(path, transposed, x, w, b, _args(case), dtype)


def test_winograd_float32_at_vgg_channel_counts() -> None:
    """Winograd's rounding grows with the reduction length: check it where VGG runs it."""
    gen = torch.Generator().manual_seed(5)
    for c_in, c_out, size, dil in [(64, 64, 23, 1), (256, 128, 14, 2)]:
        x = torch.randn(1, c_in, size, size + 3, generator=gen, dtype=torch.float64).relu()
        w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64) / (3 * c_in ** 0.5)
        b = torch.randn(c_out, generator=gen, dtype=torch.float64)
        _check_path("winograd", False, x, w, b, ((1, 1), (0, 1), (dil, dil), 1), torch.float32)


@pytest.mark.parametrize("path,transposed,case", [
    ("winograd", False, dict(n=2, c_in=2, c_out=3, kernel=(3, 3), size=(6, 9), stride=(1, 1),
                             pad=(1, 2), dilation=(2, 1), groups=1, bias=True)),
    ("gemm", False, dict(n=2, c_in=4, c_out=2, kernel=(3, 2), size=(7, 6), stride=(2, 1),
                         pad=(1, 0), dilation=(1, 2), groups=2, bias=True)),
    ("gemm", True, dict(n=2, c_in=2, c_out=4, kernel=(4, 3), size=(3, 4), stride=(2, 3),
                        pad=(1, 0), dilation=(1, 1), groups=2, bias=True)),
    ("winograd", True, dict(n=1, c_in=2, c_out=2, kernel=(3, 3), size=(5, 6), stride=(1, 1),
                            pad=(1, 0), dilation=(1, 2), groups=1, bias=True)),
], ids=["winograd-conv", "gemm-conv", "gemm-deconv", "winograd-deconv"])
def test_gradcheck(path: str, transposed: bool, case: dict) -> None:
    x, w, b = _tensors(case, transposed, seed=9)
    fn = (conv_ops.DECONV_PATHS if transposed else conv_ops.CONV_PATHS)[path]
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    # fast_mode checks random projections of the Jacobian: the exhaustive element-wise
    # comparison with torch is test_fast_path_matches_torch's job.
    assert torch.autograd.gradcheck(lambda x, w, b: fn(x, w, b, *_args(case)), inputs, fast_mode=True)


@pytest.mark.parametrize("path", ["winograd", "gemm"])
def test_only_needed_grads_are_computed_and_kept(path: str) -> None:
    """A frozen weight keeps no input alive; an input that needs no grad gets none."""
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    fn = conv_ops.CONV_PATHS[path]
    args = ((1, 1), (1, 1), (2, 2), 1)

    y = fn(x.clone().requires_grad_(), w, None, *args)        # frozen weight
    assert all(t is None for t in y.grad_fn.saved_tensors[:1])
    wr = w.clone().requires_grad_()
    y = fn(x, wr, None, *args)                                # data input
    y.sum().backward()
    ref = torch.autograd.grad(F.conv2d(x, wr, None, 1, 1, 2).sum(), wr)[0]
    _assert_close(wr.grad, ref, FLOAT64_TOL, "dw")


@pytest.mark.parametrize("path,transposed,w_shape,args", [
    ("winograd", False, (6, 8, 3, 3), ((1, 1), (1, 0), (1, 2), 1)),
    ("gemm", False, (6, 8, 1, 1), ((1, 1), (0, 0), (1, 1), 1)),
    ("gemm", False, (6, 4, 3, 2), ((2, 1), (1, 1), (1, 2), 2)),
    ("gemm", True, (8, 3, 4, 4), ((2, 2), (1, 1), (1, 1), 1)),
    ("gemm", True, (8, 1, 1, 1), ((1, 1), (0, 0), (1, 1), 2)),
])
def test_channels_last_in_channels_last_out(path: str, transposed: bool, w_shape, args) -> None:
    """Like torch's own convolutions, a channels-last input gives a channels-last output."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 11, 10, generator=gen, dtype=torch.float64)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    paths = conv_ops.DECONV_PATHS if transposed else conv_ops.CONV_PATHS
    ours = _forward_backward(paths[path], x_cl, w, None, args)
    ref = _forward_backward(_native(transposed), x, w, None, args)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for o, r in zip(ours, ref):
        if r is not None:
            _assert_close(o, r, FLOAT64_TOL, f"{path} channels-last")


# --- dispatch --------------------------------------------------------------------------

def _path(x_shape, w_shape, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1,
          transposed=False, dtype=torch.float32, device="cpu") -> str:
    x = torch.empty(x_shape, dtype=dtype, device=device)
    w = torch.empty(w_shape, dtype=dtype, device=device)
    return conv_ops.choose_path(x, w, stride, pad, dilation, groups, transposed)


@pytest.mark.parametrize("expected,x_shape,w_shape,kw", [
    # the dilated VGG-16 front-end at crop 500
    ("gemm", (1, 3, 500, 500), (64, 3, 3, 3), {}),                          # conv1_1: 3 channels
    ("winograd", (1, 64, 498, 498), (64, 64, 3, 3), {}),                     # conv1_2
    ("winograd", (1, 256, 120, 120), (256, 256, 3, 3), {}),                  # conv3_2
    ("winograd", (1, 512, 52, 52), (512, 512, 3, 3), dict(dilation=(2, 2))),  # conv5_1
    ("gemm", (1, 512, 40, 40), (4096, 512, 7, 7), dict(dilation=(4, 4))),    # fc6
    ("gemm", (1, 4096, 16, 16), (4096, 4096, 1, 1), {}),                     # fc7
    ("gemm", (1, 19, 16, 16), (19, 1, 16, 16),                               # bilinear x8
     dict(stride=(8, 8), pad=(4, 4), groups=19, transposed=True)),
    ("winograd", (1, 64, 60, 60), (64, 64, 3, 3), dict(pad=(1, 1), transposed=True)),
    # where torch's own kernels stay
    ("native", (1, 512, 44, 44), (512, 512, 3, 3), dict(dilation=(2, 2))),  # conv5_3: 100 tiles
    ("native", (1, 32, 100, 100), (32, 32, 3, 3), {}),                      # few channels
    ("native", (1, 64, 56, 56), (64, 64, 3, 3), dict(stride=(2, 2))),
    ("native", (1, 64, 56, 56), (64, 32, 3, 3), dict(groups=2)),
    ("native", (1, 3, 224, 224), (64, 3, 7, 7), dict(stride=(2, 2), pad=(3, 3))),
    ("native", (1, 64, 50), (64, 64, 3), dict(stride=(1,), pad=(0,), dilation=(1,))),
    ("native", (1, 16, 8, 8, 8), (16, 16, 3, 3, 3),
     dict(stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1))),
    ("native", (1, 64, 56, 56), (64, 64, 3, 3), dict(dtype=torch.float16)),
    ("native", (1, 64, 56, 56), (64, 64, 3, 3), dict(device="meta")),       # any non-CPU device
    ("native", (1, 19, 16, 16), (19, 1, 16, 16),
     dict(stride=(8, 8), groups=19, transposed=True, device="meta")),
])
def test_choose_path(expected: str, x_shape, w_shape, kw) -> None:
    assert _path(x_shape, w_shape, **kw) == expected


@pytest.mark.parametrize("path,transposed,x_shape,w_shape,kw", [
    ("winograd", False, (2, 64, 40, 30), (64, 64, 3, 3), dict(pad=(1, 0), dilation=(2, 1))),
    ("gemm", False, (1, 8, 20, 20), (512, 8, 7, 7), dict(pad=(2, 2), dilation=(2, 2))),
    ("gemm", False, (2, 8, 10, 10), (6, 8, 1, 1), dict(stride=(2, 1))),
    ("gemm", False, (2, 3, 12, 10), (5, 3, 3, 3), dict(pad=(1, 1))),
    ("native", False, (1, 8, 11, 11), (8, 4, 3, 3), dict(stride=(2, 2), groups=2)),
    ("native", False, (1, 4, 17), (6, 4, 3), dict(stride=(2,), pad=(1,), dilation=(2,))),
    ("native", False, (1, 2, 5, 6, 7), (3, 2, 3, 1, 2),
     dict(stride=(1, 2, 1), pad=(1, 0, 1), dilation=(1, 1, 2))),
    ("gemm", True, (1, 6, 7, 7), (6, 1, 4, 4), dict(stride=(2, 2), pad=(1, 1), groups=6)),
    ("winograd", True, (1, 64, 48, 48), (64, 64, 3, 3), dict(pad=(1, 1))),
    ("native", True, (1, 4, 9), (4, 3, 4), dict(stride=(2,), pad=(1,), dilation=(1,))),
])
def test_public_functions_match_torch(path: str, transposed: bool, x_shape, w_shape, kw) -> None:
    """convolution/deconvolution through the dispatcher, on each path."""
    nd = len(x_shape) - 2
    stride, pad, dilation = (kw.get(k, (v,) * nd) for k, v in (("stride", 1), ("pad", 0), ("dilation", 1)))
    groups = kw.get("groups", 1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=gen)
    w = torch.randn(w_shape, generator=gen) / (w_shape[1] * 9) ** 0.5
    c_out = w_shape[1] * groups if transposed else w_shape[0]
    b = torch.randn(c_out, generator=gen)
    fn = conv_ops.deconvolution if transposed else conv_ops.convolution
    assert conv_ops.choose_path(x, w, stride, pad, dilation, groups, transposed) == path
    ref = _forward_backward(_native(transposed), x.double(), w.double(), b.double(),
                            (stride, pad, dilation, groups))
    ours = _forward_backward(fn, x, w, b, (stride, pad, dilation, groups))
    for i, (o, r) in enumerate(zip(ours, ref)):
        _assert_close(o, r, FLOAT32_FORWARD_TOL if i == 0 else FLOAT32_BACKWARD_TOL, f"output {i}")
