"""Convolution and transposed convolution as used by the Convolution and
Deconvolution layers (Caffe semantics: zero padding, floor output size).

Everything spatial is given per axis (tuples of length 1, 2 or 3). Weight
layouts are Caffe's: convolution (C_out, C_in/g, *k), deconvolution
(C_in, C_out/g, *k). Outputs keep the input's memory format (NCHW or
channels-last), as torch's own convolutions do.

A convolution is three GEMM-shaped operations: the forward, the input gradient
and the weight gradient. A Deconvolution is the same three with the roles
exchanged (its forward is a convolution's input gradient, its input gradient a
convolution's forward). Each operation runs on one of three paths:

* ``winograd`` -- 2-D 3x3, stride 1, one group, CPU, float32/float64: Winograd
  F(4x4, 3x3) (Lavin & Gray 2016): 36 batched GEMMs, (tiles x C_in) x
  (C_in x C_out), do the work of 144 multiply-adds per 4x4 output tile.
  Dilation is space-to-batch folded into the tile gather (element a of a
  phase-i tile reads input row (4t + a) * d + i), so a dilated 3x3 costs what
  an undilated one does. The map goes through in bands of tile rows,
  channels-last inside a band, so the memory-bound transforms run in cache.
  The interpolation points 0, 1, -1, 1/2, -2 (and infinity) keep float32
  within ~3e-6 of a float64 reference, relative to the output's max (direct
  convolution: ~2e-6; the textbook points 0, +-1, +-2 give ~1e-5, Caffe's
  forward tolerance).
* ``gemm`` -- 2-D, CPU, float32/float64: explicit im2col + GEMM, one image at
  a time, as Caffe does (a 1x1 kernel needs no im2col: the image is the column
  matrix); the input gradient is Caffe's GEMM followed by col2im.
* ``native`` -- torch's own kernels (oneDNN on CPU): every case, and the only
  path on other devices, for other dtypes and in 1-D and 3-D.

On the CPU, which path runs each operation is measured once per machine and
operation shape (layers/conv_tuning.py: the fastest depends on the CPU's
vector width, caches and memory bandwidth and on torch's build). ``choose_path``
gives the fixed rule used when that tuning is off (``FCNWILD_CONV_TUNING=off``,
as in the test suite) and as every measurement's first candidate;
``choose_plan`` gives the paths a call takes.
benchmarks/bench_conv_paths.py times every path on the front-end's shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from fcnwild.layers import buffers, conv_tuning

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_FAST_DTYPES = (torch.float32, torch.float64)
PATHS = ("native", "gemm", "winograd")
OPS = ("forward", "input_grad", "weight_grad")

# The fixed rules. Winograd pays off once its GEMMs outweigh the tile transforms
# (enough channels) and the transformed kernels, 4x the size of the plain ones,
# are reused over enough 4x4 output tiles.
_WINOGRAD_MIN_CHANNELS = 64
_WINOGRAD_MIN_TILES = 128
# For a kernel larger than 3x3, im2col + GEMM wins once the GEMM dwarfs the im2col
# copy (each column element feeds 2 * C_out/g FLOPs); torch's CPU backward of a
# dilated large kernel (fc6: 7x7, dilation 4) is orders of magnitude slower still.
_GEMM_MIN_OUT_CHANNELS = 512
# A very shallow input (VGG's conv1_1: 3 channels x 3x3 = 27 values per output
# pixel) makes im2col cheap and oneDNN's blocking poor.
_GEMM_MAX_SHALLOW_K = 32
# A kernel's transient buffer (one image's column matrix, oneDNN's copy of a kernel)
# must stay small next to the activations.
_GEMM_MAX_COL_BYTES = 256 << 20


@dataclass(frozen=True)
class Geometry:
    """Kernel, stride, pad, dilation and groups of one convolution (per spatial axis)."""
    kernel: tuple
    stride: tuple
    pad: tuple
    dilation: tuple
    groups: int

    @property
    def identity_cols(self) -> bool:
        """A 1x1, stride-1, unpadded kernel needs no column matrix: the image is one."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) \
            and all(p == 0 for p in self.pad)

    def out_size(self, size: Sequence[int]) -> tuple:
        """The convolution's output size for an input of ``size``."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(size, self.kernel, self.stride, self.pad, self.dilation))

    def in_size(self, size: Sequence[int]) -> tuple:
        """The deconvolution's output size: the input size whose convolution has ``size``
        (the largest such, as Caffe's Deconvolution defines it)."""
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + 1 for n, k, s, p, d in
                     zip(size, self.kernel, self.stride, self.pad, self.dilation))


class Plan(NamedTuple):
    """The path of each operation of one layer, in the layer's own terms."""
    forward: str
    input_grad: str
    weight_grad: str


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------

def choose_path(x: Tensor, weight: Tensor, stride: Sequence[int], pad: Sequence[int],
                dilation: Sequence[int], groups: int, transposed: bool = False) -> str:
    """The fixed rule's path for ``convolution`` (``deconvolution`` if ``transposed``)."""
    if not _tunable(x, weight):
        return "native"
    kernel = tuple(weight.shape[2:])
    if not transposed:
        return _conv_rule(tuple(x.shape), x.element_size(), weight.shape[0], kernel, stride,
                          pad, dilation, groups)
    if all(s == 1 for s in stride):
        # A stride-1 deconvolution is a convolution with the flipped kernel.
        return _conv_rule(tuple(x.shape), x.element_size(), weight.shape[1] * groups, kernel,
                          stride, _flipped_pad(kernel, pad, dilation), dilation, groups)
    col_bytes = x.element_size() * math.prod(weight.shape[1:]) * groups * x.shape[2] * x.shape[3]
    return "gemm" if col_bytes <= _GEMM_MAX_COL_BYTES else "native"


def choose_plan(x: Tensor, weight: Tensor, stride: Sequence[int], pad: Sequence[int],
                dilation: Sequence[int], groups: int, transposed: bool = False) -> Plan:
    """The paths ``convolution`` (``deconvolution``) takes for these shapes; measures
    those not known yet on random tensors of the shapes (see layers/conv_tuning.py)."""
    rule = choose_path(x, weight, stride, pad, dilation, groups, transposed)
    if not _tunable(x, weight):
        return Plan(rule, rule, rule)
    geom = Geometry(tuple(weight.shape[2:]), tuple(stride), tuple(pad), tuple(dilation), groups)
    gen = torch.Generator().manual_seed(0)
    other_size = ((x.shape[0], weight.shape[1] * groups) + geom.in_size(x.shape[2:]) if transposed
                  else (x.shape[0], weight.shape[0]) + geom.out_size(x.shape[2:]))
    other = torch.randn(other_size, generator=gen, dtype=x.dtype).contiguous(
        memory_format=_memory_format(x))
    # In convolution terms: the input side and the output side.
    conv_x, conv_y = (other, x) if transposed else (x, other)
    fmt = _memory_format(x)
    paths = {op: _resolve(op, rule, geom, fmt, x=conv_x, w=weight, gy=conv_y) for op in OPS}
    if transposed:
        return Plan(paths["input_grad"], paths["forward"], paths["weight_grad"])
    return Plan(paths["forward"], paths["input_grad"], paths["weight_grad"])


def convolution(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Caffe's Convolution forward; weight is (C_out, C_in/groups, *kernel)."""
    rule = choose_path(x, weight, stride, pad, dilation, groups)
    geom = Geometry(tuple(weight.shape[2:]), tuple(stride), tuple(pad), tuple(dilation), groups)
    if not _tunable(x, weight) or (rule == "native" and conv_tuning.mode() == "off"):
        return _native_conv(x, weight, bias, geom)
    x = _dense(x)
    with torch.no_grad():
        path = _resolve("forward", rule, geom, _memory_format(x), x=x, w=weight)
    return _Convolution.apply(x, weight, bias, geom, rule, path)


def deconvolution(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                  pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Caffe's Deconvolution forward; weight is (C_in, C_out/groups, *kernel)."""
    rule = choose_path(x, weight, stride, pad, dilation, groups, transposed=True)
    geom = Geometry(tuple(weight.shape[2:]), tuple(stride), tuple(pad), tuple(dilation), groups)
    if not _tunable(x, weight) or (rule == "native" and conv_tuning.mode() == "off"):
        return _native_deconv(x, weight, bias, geom)
    x = _dense(x)
    with torch.no_grad():
        path = _resolve("input_grad", rule, geom, _memory_format(x), gy=x, w=weight,
                        x_shape=(x.shape[0], weight.shape[1] * groups) + geom.in_size(x.shape[2:]))
    return _Deconvolution.apply(x, weight, bias, geom, rule, path)


def _tunable(x: Tensor, weight: Tensor) -> bool:
    """Whether paths other than native exist: 2-D on the CPU in float32/float64, outside
    autocast (whose casts only torch's own convolutions take part in)."""
    return (x.device.type == "cpu" and x.dtype in _FAST_DTYPES and weight.dtype == x.dtype
            and x.dim() == 4 and weight.dim() == 4 and not torch.is_autocast_enabled("cpu"))


def _conv_rule(x_shape: tuple, element_size: int, c_out: int, kernel: tuple,
               stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
               groups: int) -> str:
    c_in = x_shape[1]
    out_size = [(size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, k, s, p, d in zip(x_shape[2:], kernel, stride, pad, dilation)]
    if min(out_size) < 1 or math.prod(x_shape) == 0:
        return "native"                     # torch reports the bad shape
    if (kernel == (3, 3) and tuple(stride) == (1, 1) and groups == 1
            and min(c_in, c_out) >= _WINOGRAD_MIN_CHANNELS
            and _winograd_tiles(x_shape[0], out_size, dilation) >= _WINOGRAD_MIN_TILES):
        return "winograd"
    if kernel == (1, 1) and tuple(pad) == (0, 0):
        return "gemm"
    depth = c_in // groups * kernel[0] * kernel[1]          # column-matrix rows per group
    if element_size * depth * groups * math.prod(out_size) > _GEMM_MAX_COL_BYTES:
        return "native"
    if depth <= _GEMM_MAX_SHALLOW_K and tuple(stride) == (1, 1):
        return "gemm"
    if kernel[0] * kernel[1] > 9 and c_out // groups >= _GEMM_MIN_OUT_CHANNELS:
        return "gemm"
    return "native"


def _winograd_tiles(batch: int, out_size: Sequence[int], dilation: Sequence[int]) -> int:
    """4x4 output tiles of a Winograd convolution, over all dilation phases."""
    n = batch
    for size, d in zip(out_size, dilation):
        n *= d * -(-(-(-size // d)) // _TILE_OUT)
    return n


def _flipped_pad(kernel: Sequence[int], pad: Sequence[int], dilation: Sequence[int]) -> tuple:
    """Padding of the stride-1 convolution that equals a stride-1 deconvolution."""
    return tuple(d * (k - 1) - p for k, p, d in zip(kernel, pad, dilation))


# ---------------------------------------------------------------------------------------
# measured choice of each operation's path
# ---------------------------------------------------------------------------------------

def _candidates(op: str, geom: Geometry, x_shape: Sequence[int], w_shape: Sequence[int],
                element_size: int) -> list[str]:
    """The paths worth measuring for one operation of a 2-D CPU convolution."""
    # torch's CPU weight gradient of a dilated kernel larger than 3x3 drops to a
    # reference loop once the problem is large (fc6: minutes instead of a fraction of
    # a second), and at a size a probe can afford it does not: it is never measured.
    dilated_large = any(d > 1 for d in geom.dilation) and math.prod(geom.kernel) > 9
    # oneDNN's forward copies the whole kernel into its blocked layout on every call: for
    # a kernel larger than a column matrix may be (fc6's 411 MB), that transient copy
    # raises the step's peak memory by as much.
    reordered = op == "forward" and element_size * math.prod(w_shape) > _GEMM_MAX_COL_BYTES
    paths = [] if (op == "weight_grad" and dilated_large) or reordered else ["native"]
    cols = element_size * x_shape[1] * math.prod(geom.kernel) * math.prod(geom.out_size(x_shape[2:]))
    if geom.identity_cols or cols <= _GEMM_MAX_COL_BYTES:
        paths.append("gemm")
    if geom.kernel == (3, 3) and geom.stride == (1, 1) and geom.groups == 1:
        paths.append("winograd")
    return paths


def _plan_key(op: str, x_shape: Sequence[int], w_shape: Sequence[int], geom: Geometry,
              dtype: torch.dtype, fmt: torch.memory_format) -> str:
    """Names one operation's problem for the plan cache. Output sizes within a quarter
    octave share a measurement (whole-image inference meets many nearby sizes)."""
    out = geom.out_size(x_shape[2:])
    size_class = round(4 * math.log2(max(math.prod(out), 1)))
    layout = "nhwc" if fmt == torch.channels_last else "nchw"
    return (f"{op} n{x_shape[0]} c{x_shape[1]}->{w_shape[0]} k{geom.kernel} s{geom.stride} "
            f"d{geom.dilation} g{geom.groups} px{size_class} {str(dtype)[6:]} {layout}")


def _resolve(op: str, rule: str, geom: Geometry, fmt: torch.memory_format, *, w: Tensor,
             x: Tensor | None = None, gy: Tensor | None = None,
             x_shape: Sequence[int] | None = None) -> str:
    """The path of one convolution operation (in convolution terms: ``x`` the input
    side, ``gy`` the output side) of a layer whose input has memory format ``fmt``,
    measured once per machine and shape."""
    x_shape = tuple(x.shape) if x is not None else tuple(x_shape)
    sample = x if x is not None else gy
    if conv_tuning.mode() == "off":
        return rule
    candidates = _candidates(op, geom, x_shape, tuple(w.shape), sample.element_size())
    key = _plan_key(op, x_shape, w.shape, geom, sample.dtype, fmt)
    full = _trial_factory(op, geom, x_shape, w, x, gy)
    probe_shapes = _probe_shapes(x_shape, tuple(w.shape), geom.groups)
    probe = None
    if probe_shapes is not None:
        made: list[Callable[[str], Callable[[], Tensor]]] = []

        def probe(path: str) -> Callable[[], Tensor]:
            # The probe's tensors are made only when a measurement runs: most calls
            # find their plan in the cache.
            if not made:
                gen = torch.Generator().manual_seed(0)
                px_shape, pw_shape = probe_shapes
                px = torch.randn(px_shape, generator=gen,
                                 dtype=sample.dtype).contiguous(memory_format=fmt)
                pw = torch.randn(pw_shape, generator=gen, dtype=sample.dtype)
                pgy = torch.randn((px_shape[0], pw_shape[0]) + geom.out_size(px_shape[2:]),
                                  generator=gen, dtype=sample.dtype).contiguous(memory_format=fmt)
                made.append(_trial_factory(op, geom, px_shape, pw, px, pgy))
            return made[0](path)
    with torch.no_grad():
        return conv_tuning.choose(key, candidates, rule, full, probe)


def _probe_shapes(x_shape: tuple, w_shape: tuple, groups: int) -> tuple[tuple, tuple] | None:
    """x and weight shapes with PROBE_DIVISOR times fewer channels per group on either
    side (at least one); None when that changes nothing."""
    c_in_g = max(1, x_shape[1] // groups // conv_tuning.PROBE_DIVISOR)
    c_out_g = max(1, w_shape[0] // groups // conv_tuning.PROBE_DIVISOR)
    if c_in_g * groups == x_shape[1] and c_out_g * groups == w_shape[0]:
        return None
    return ((x_shape[0], c_in_g * groups) + x_shape[2:],
            (c_out_g * groups, c_in_g) + w_shape[2:])


def _trial_factory(op: str, geom: Geometry, x_shape: tuple, w: Tensor, x: Tensor | None,
                   gy: Tensor | None) -> Callable[[str], Callable[[], Tensor]]:
    """path -> a callable running ``op`` on these tensors with that path."""
    def trial(path: str) -> Callable[[], Tensor]:
        kernels = KERNELS[path]
        if op == "forward":
            return lambda: kernels.forward(x, w, None, geom)
        if op == "input_grad":
            return lambda: kernels.input_grad(gy, w, geom, x_shape[2:])
        return lambda: kernels.weight_grad(x, gy, geom, tuple(w.shape))
    return trial


# ---------------------------------------------------------------------------------------
# the autograd Functions: one path per operation
# ---------------------------------------------------------------------------------------

def _bias_grad(gy: Tensor, ctx: FunctionCtx) -> Tensor | None:
    if not (ctx.has_bias and ctx.needs_input_grad[2]):
        return None
    out = buffers.take(ctx.bias, (gy.shape[1],), gy)
    return torch.sum(gy, (0, 2, 3), out=out) if out is not None else gy.sum((0, 2, 3))


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    if bias is not None:
        y += bias.view(1, -1, *([1] * (y.dim() - 2)))
    return y


def _remember(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
              geom: Geometry, rule: str) -> None:
    """What backward needs: x for the weight grad, W for the input grad (only those), and
    the tensors whose parked memory the gradients may take (layers/buffers.py)."""
    need_x, need_w, _ = ctx.needs_input_grad[:3]
    ctx.save_for_backward(x if need_w else None, weight if need_x else None)
    ctx.geom, ctx.rule, ctx.has_bias = geom, rule, bias is not None
    ctx.x_shape, ctx.w_shape, ctx.fmt = tuple(x.shape), tuple(weight.shape), _memory_format(x)
    ctx.x, ctx.weight, ctx.bias = x, weight, bias


class _Convolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geom: Geometry, rule: str, path: str) -> Tensor:
        _remember(ctx, x, weight, bias, geom, rule)
        out = buffers.take(x, (x.shape[0], weight.shape[0]) + geom.out_size(x.shape[2:]), x,
                           ctx.fmt, buffers.OUTPUT)
        return KERNELS[path].forward(x, weight, bias, geom, out)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, weight = ctx.saved_tensors
        gy, geom = _dense(gy), ctx.geom
        gx = gw = None
        if weight is not None:
            path = _resolve("input_grad", ctx.rule, geom, ctx.fmt, gy=gy, w=weight,
                            x_shape=ctx.x_shape)
            gx = KERNELS[path].input_grad(gy, weight, geom, ctx.x_shape[2:],
                                          buffers.take(ctx.x, ctx.x_shape, gy, ctx.fmt))
        if x is not None:
            x = _dense(x)
            path = _resolve("weight_grad", ctx.rule, geom, ctx.fmt, x=x, gy=gy,
                            w=_shape_only(weight, ctx.w_shape, x))
            gw = KERNELS[path].weight_grad(x, gy, geom, ctx.w_shape,
                                           buffers.take(ctx.weight, ctx.w_shape, x))
        return gx, gw, _bias_grad(gy, ctx), None, None, None


class _Deconvolution(torch.autograd.Function):
    """Caffe's Deconvolution: the adjoint of the convolution whose weight it holds."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geom: Geometry, rule: str, path: str) -> Tensor:
        _remember(ctx, x, weight, bias, geom, rule)
        size = geom.in_size(x.shape[2:])
        out = buffers.take(x, (x.shape[0], weight.shape[1] * geom.groups) + size, x, ctx.fmt,
                           buffers.OUTPUT)
        y = KERNELS[path].input_grad(x, weight, geom, size, out)
        return _add_bias(y, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, weight = ctx.saved_tensors
        gy, geom = _dense(gy), ctx.geom
        gx = gw = None
        # The deconvolution's output is the convolution's input side, and vice versa.
        if weight is not None:
            path = _resolve("forward", ctx.rule, geom, ctx.fmt, x=gy, w=weight)
            gx = KERNELS[path].forward(gy, weight, None, geom,
                                       buffers.take(ctx.x, ctx.x_shape, gy, ctx.fmt))
        if x is not None:
            x = _dense(x)
            path = _resolve("weight_grad", ctx.rule, geom, ctx.fmt, x=gy, gy=x,
                            w=_shape_only(weight, ctx.w_shape, x))
            gw = KERNELS[path].weight_grad(gy, x, geom, ctx.w_shape,
                                           buffers.take(ctx.weight, ctx.w_shape, x))
        return gx, gw, _bias_grad(gy, ctx), None, None, None


def _shape_only(weight: Tensor | None, shape: tuple, like: Tensor) -> Tensor:
    """The weight, or a stand-in of its shape where only its shape is needed."""
    return weight if weight is not None else like.new_empty(1).expand(shape)


# ---------------------------------------------------------------------------------------
# memory format
# ---------------------------------------------------------------------------------------

def _memory_format(x: Tensor) -> torch.memory_format:
    """Like torch's own convolutions, answer in the input's memory format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dense(t: Tensor) -> Tensor:
    """t itself when it is contiguous in either memory format, else a contiguous copy."""
    return t if _memory_format(t) == torch.channels_last else t.contiguous()


def _empty_like_format(shape: Sequence[int], like: Tensor, fmt: torch.memory_format) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------
# work buffers
# ---------------------------------------------------------------------------------------

class _Workspace:
    """Scratch buffers the gemm and winograd kernels reuse from call to call.

    A train step runs every kernel on the same shapes each iteration. Allocating the
    band buffers, transformed kernels and column matrices afresh each time churns the
    heap; with freed memory kept in the process (tools/allocator.py) the churn
    fragments it, and the process grows step after step. Buffers are named by role:
    two buffers in use at the same time never share memory.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def take(self, role: str, numel: int, like: Tensor) -> Tensor:
        """A flat buffer of ``numel`` elements of ``like``'s dtype and device (its
        contents are whatever the role's last user left)."""
        key = (role, like.dtype, like.device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)            # free the old one before growing
            buffer = self._buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel]


_workspace = _Workspace()


# ---------------------------------------------------------------------------------------
# native: torch's kernels
# ---------------------------------------------------------------------------------------

def _native_conv(x: Tensor, weight: Tensor, bias: Tensor | None, geom: Geometry,
                 out: Tensor | None = None) -> Tensor:
    return _CONV[len(geom.stride)](x, weight, bias, geom.stride, geom.pad, geom.dilation,
                                   geom.groups)


def _native_deconv(x: Tensor, weight: Tensor, bias: Tensor | None, geom: Geometry) -> Tensor:
    return _CONV_T[len(geom.stride)](x, weight, bias, geom.stride, geom.pad, 0, geom.groups,
                                     geom.dilation)


def _native_input_grad(gy: Tensor, weight: Tensor, geom: Geometry, size: Sequence[int],
                       out: Tensor | None = None) -> Tensor:
    # The transposed convolution, with the rows and columns the forward's floor dropped.
    extra = tuple(n - m for n, m in zip(size, geom.in_size(gy.shape[2:])))
    return _CONV_T[len(geom.stride)](gy, weight, None, geom.stride, geom.pad, extra,
                                     geom.groups, geom.dilation)


def _native_weight_grad(x: Tensor, gy: Tensor, geom: Geometry, w_shape: Sequence[int],
                        out: Tensor | None = None) -> Tensor:
    nd = len(geom.stride)
    return torch.ops.aten.convolution_backward(
        gy, x, gy.new_empty(1).expand(w_shape), None, geom.stride, geom.pad, geom.dilation,
        False, [0] * nd, geom.groups, (False, True, False))[1]


# ---------------------------------------------------------------------------------------
# gemm: im2col + GEMM, one image at a time (Caffe's forward_cpu_gemm & co.)
# ---------------------------------------------------------------------------------------

def _cols(image: Tensor, geom: Geometry) -> Tensor:
    """(C, H, W) image -> (groups, C/g * kh * kw, H_out * W_out) column matrices (im2col;
    the workspace's, valid until the next call)."""
    c = image.shape[0]
    if geom.identity_cols:
        col = image.reshape(c, -1)
        return col.view(geom.groups, c // geom.groups, col.shape[1])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    out_h, out_w = geom.out_size(image.shape[1:])
    if ph or pw:
        padded = _workspace.take("gemm.padded", c * (image.shape[1] + 2 * ph) *
                                 (image.shape[2] + 2 * pw), image)
        padded = padded.view(c, image.shape[1] + 2 * ph, image.shape[2] + 2 * pw)
        padded.zero_()
        padded[:, ph:ph + image.shape[1], pw:pw + image.shape[2]].copy_(image)
        image = padded
    s_c, s_h, s_w = image.stride()
    # Column (c, i, j), row (y, x) reads image[c, y * sh + i * dh, x * sw + j * dw]:
    # one strided copy, which torch runs vectorised and in parallel.
    windows = image.as_strided((c, kh, kw, out_h, out_w),
                               (s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w))
    col = _workspace.take("gemm.cols", c * kh * kw * out_h * out_w, image)
    col.view(windows.shape).copy_(windows)
    return col.view(geom.groups, c // geom.groups * kh * kw, out_h * out_w)


def _image(col: Tensor, geom: Geometry, size: Sequence[int]) -> Tensor:
    """(C * kh * kw, H_out * W_out) column matrix -> summed-back (C, H, W) image."""
    if geom.identity_cols:
        return col.view(-1, *size)
    # torch's col2im runs images in parallel, not channels: channel chunks go in as
    # images (each channel's sum is independent of the others').
    chunks = _parallel_chunks(col.shape[0] // math.prod(geom.kernel))
    image = F.fold(col.view(chunks, col.shape[0] // chunks, col.shape[1]), tuple(size),
                   geom.kernel, geom.dilation, geom.pad, geom.stride)
    return image.view(-1, *size)


def _parallel_chunks(channels: int) -> int:
    """The number of channel chunks that keeps every thread busy: the smallest divisor
    of ``channels`` not below the thread count (the whole when there is none)."""
    threads = torch.get_num_threads()
    return next((d for d in range(threads, channels + 1) if channels % d == 0), 1) \
        if threads > 1 else 1


def _gemm_forward(x: Tensor, weight: Tensor, bias: Tensor | None, geom: Geometry,
                  out: Tensor | None = None) -> Tensor:
    """Convolution: y_n = W @ im2col(x_n), per group (written into ``out`` if given)."""
    g, c_out = geom.groups, weight.shape[0]
    fmt = _memory_format(x)
    y = out if out is not None else \
        _empty_like_format((x.shape[0], c_out) + geom.out_size(x.shape[2:]), x, fmt)
    w = weight.reshape(g, c_out // g, -1)
    for n in range(x.shape[0]):
        cols = _cols(x[n], geom)
        if fmt == torch.channels_last:
            # y_n^T = cols^T W^T: the GEMM writes the channels-last image directly.
            _matmul_into_hwc(cols.transpose(1, 2), w.transpose(1, 2), y[n])
        else:
            torch.bmm(w, cols, out=y[n].view(g, c_out // g, -1))
    return _add_bias(y, bias)


def _gemm_input_grad(gy: Tensor, weight: Tensor, geom: Geometry, size: Sequence[int],
                     out: Tensor | None = None) -> Tensor:
    """The adjoint of ``_gemm_forward`` (its input grad, a Deconvolution's forward):
    x_n = col2im(W^T @ y_n), per group; ``size`` is x's spatial size (written into
    ``out`` if given)."""
    g, c_out = geom.groups, weight.shape[0]
    w = weight.reshape(g, c_out // g, -1)
    fmt = _memory_format(gy)
    x = out if out is not None else \
        _empty_like_format((gy.shape[0], weight.shape[1] * g) + tuple(size), gy, fmt)
    for n in range(gy.shape[0]):
        dy = gy[n].reshape(g, c_out // g, -1)
        if geom.identity_cols and fmt == torch.channels_last:
            _matmul_into_hwc(dy.transpose(1, 2), w, x[n])
        elif geom.identity_cols:
            torch.bmm(w.transpose(1, 2), dy, out=x[n].view(g, w.shape[2], dy.shape[2]))
        else:
            rows = w.shape[2]
            col = _workspace.take("gemm.cols", g * rows * dy.shape[2], dy)
            torch.bmm(w.transpose(1, 2), dy, out=col.view(g, rows, dy.shape[2]))
            x[n] = _image(col.view(g * rows, dy.shape[2]), geom, size)
    return x


def _matmul_into_hwc(a: Tensor, b: Tensor, image: Tensor) -> None:
    """Per-group a @ b, (g, H*W, C/g), written into one channels-last (C, H, W) image."""
    g = a.shape[0]
    hwc = image.permute(1, 2, 0).view(-1, g, image.shape[0] // g)
    if g == 1:
        torch.mm(a[0], b[0], out=hwc[:, 0])
    else:
        hwc.copy_(torch.bmm(a, b).transpose(0, 1))


def _gemm_weight_grad(x: Tensor, gy: Tensor, geom: Geometry, w_shape: Sequence[int],
                      out: Tensor | None = None) -> Tensor:
    """dW = sum_n dy_n @ im2col(x_n)^T, per group (written into ``out`` if given)."""
    g, c_out = geom.groups, w_shape[0]
    gw = out if out is not None else gy.new_empty(w_shape)
    gw_g = gw.view(g, c_out // g, -1)
    for n in range(x.shape[0]):
        dy, cols = gy[n].reshape(g, c_out // g, -1), _cols(x[n], geom).transpose(1, 2)
        # The first image writes dW directly: fc6's dW is 411 MB, not worth zeroing first.
        if n == 0:
            torch.bmm(dy, cols, out=gw_g)
        else:
            gw_g.baddbmm_(dy, cols)
    return gw


# ---------------------------------------------------------------------------------------
# winograd: F(4x4, 3x3), stride 1, one group
# ---------------------------------------------------------------------------------------

# Y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 input tile d, 3x3 kernel g, 4x4 output
# tile Y; Toom-Cook matrices for the points 0, 1, -1, 1/2, -2 and infinity.
_WINO_AT = ((1, 1, 1, 1, 1, 0),
            (0, 1, -1, 1 / 2, -2, 0),
            (0, 1, 1, 1 / 4, 4, 0),
            (0, 1, -1, 1 / 8, -8, 1))
_WINO_G = ((1, 0, 0),
           (1 / 3, 1 / 3, 1 / 3),
           (-1 / 3, 1 / 3, -1 / 3),
           (-16 / 15, -8 / 15, -4 / 15),
           (1 / 15, -2 / 15, 4 / 15),
           (0, 0, 1))
_WINO_BT = ((1, -3 / 2, -2, 3 / 2, 1, 0),
            (0, -1, 1 / 2, 5 / 2, 1, 0),
            (0, 1, -5 / 2, 1 / 2, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 1 / 2, -1, -1 / 2, 1, 0),
            (0, 1, -3 / 2, -2, 3 / 2, 1))
_TILE_OUT, _TILE_IN = 4, 6
# Tiles per band: the band's transformed tiles (36 x C x tiles) should stay in
# cache, yet its GEMMs need enough columns to run at full speed.
_BAND_BYTES = 4 << 20
_BAND_MIN_TILES = 128

_wino_cache: dict = {}


def _winograd_matrices(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """kron(B^T, B^T) (36x36), kron(A^T, A^T) (16x36), kron(G, G) (36x9)."""
    key = (dtype, device)
    if key not in _wino_cache:
        def kron(m: tuple) -> Tensor:
            t = torch.tensor(m, dtype=torch.float64)
            return torch.kron(t, t).to(dtype=dtype, device=device)
        _wino_cache[key] = kron(_WINO_BT), kron(_WINO_AT), kron(_WINO_G)
    return _wino_cache[key]


def _winograd_weights(weight: Tensor, adjoint: bool = False) -> Tensor:
    """(C_out, C_in, 3, 3) kernels -> (36, C_in, C_out) transformed kernels, or with
    ``adjoint`` the (36, C_out, C_in) transformed kernels of the input gradient's
    convolution (kernels flipped, channels swapped). Flipping a 3x3 kernel reverses
    its 9 values, so kron(G, G) with reversed columns transforms the flipped kernels
    without copying them. The result is the workspace's, valid until the next call."""
    c_out, c_in = weight.shape[:2]
    _, _, gk = _winograd_matrices(weight.dtype, weight.device)
    if adjoint:
        gk = gk.flip(1)
    u = _workspace.take("winograd.u", 36 * c_out * c_in, weight).view(36, c_out * c_in)
    torch.mm(gk, weight.reshape(c_out * c_in, 9).t(), out=u)
    u = u.view(36, c_out, c_in)
    return u if adjoint else u.transpose(1, 2)


class _Tiling:
    """How a stride-1 3x3 convolution's output splits into 4x4 tiles and bands.

    With dilation d the output splits into d x d phases (space-to-batch); phase
    (i, j) holds output rows i, i+d, ... and is an undilated convolution of the
    input rows i, i+d, ... Tiles are indexed (n, phase row, tile row, phase
    column, tile column); a band is a run of tile rows of every phase. Inside a
    band, images are channels-last so that every gather moves whole
    channel vectors.
    """

    def __init__(self, x_shape: Sequence[int], channels: int, pad: tuple, dilation: tuple):
        self.n, _, h, w = x_shape
        self.dilation = dilation
        (ph, pw), (dh, dw) = pad, dilation
        self.out_h, self.out_w = h + 2 * ph - 2 * dh, w + 2 * pw - 2 * dw
        self.tiles_h = -(-(-(-self.out_h // dh)) // _TILE_OUT)
        self.tiles_w = -(-(-(-self.out_w // dw)) // _TILE_OUT)
        self.tiles_per_row = self.n * dh * dw * self.tiles_w
        want = max(_BAND_BYTES // (36 * channels * 4), _BAND_MIN_TILES)
        self.band = max(1, min(self.tiles_h, want // self.tiles_per_row))
        self.max_tiles = self.band * self.tiles_per_row

    def bands(self) -> list[tuple[int, int]]:
        """(first tile row, tile rows) of each band."""
        return [(t0, min(self.band, self.tiles_h - t0)) for t0 in range(0, self.tiles_h, self.band)]


class _TileReader:
    """Gathers (size^2, tiles, C) tiles of a band of the zero-padded image x
    (size 6: the overlapping input tiles; size 4: the output-grad tiles)."""

    def __init__(self, tiling: _Tiling, x: Tensor, size: int, pad: tuple, role: str):
        self.t, self.x, self.size, self.pad = tiling, x, size, pad
        dh, dw = tiling.dilation
        self.rows = ((tiling.band - 1) * _TILE_OUT + size) * dh
        cols = ((tiling.tiles_w - 1) * _TILE_OUT + size) * dw
        c = x.shape[1]
        # Zeros once: the padding columns are never written; padding rows are
        # cleared per band because an earlier band may have filled them.
        shape = (x.shape[0], self.rows, cols, c)
        self.image = _workspace.take(role + ".image", math.prod(shape), x).view(shape).zero_()
        w = x.shape[3]
        self.c0, self.src_c0 = max(pad[1], 0), max(-pad[1], 0)
        self.ncols = min(w - self.src_c0, cols - self.c0)
        self.flat = _workspace.take(role + ".tiles", size * size * tiling.max_tiles * c, x)

    def read(self, t0: int, b: int) -> Tensor:
        dh, dw = self.t.dilation
        h, c = self.x.shape[2], self.x.shape[1]
        rows = ((b - 1) * _TILE_OUT + self.size) * dh
        r0 = t0 * _TILE_OUT * dh - self.pad[0]
        lo, hi = min(max(r0, 0), h), min(max(r0 + rows, 0), h)
        image = self.image[:, :rows]
        if hi <= lo:
            image.zero_()
        else:
            image[:, :lo - r0].zero_()
            image[:, hi - r0:].zero_()
            src = self.x[:, :, lo:hi, self.src_c0:self.src_c0 + self.ncols]
            image[:, lo - r0:hi - r0, self.c0:self.c0 + self.ncols].copy_(src.permute(0, 2, 3, 1))
        s_n, s_h, s_w, _ = image.stride()
        k = self.size
        view = image.as_strided((k, k, self.t.n, dh, b, dw, self.t.tiles_w, c),
                                (dh * s_h, dw * s_w, s_n, s_h, _TILE_OUT * dh * s_h, s_w,
                                 _TILE_OUT * dw * s_w, 1), image.storage_offset())
        tiles = self.flat[:k * k * b * self.t.tiles_per_row * c].view(k * k, -1, c)
        tiles.view(view.shape).copy_(view)
        return tiles


class _TileWriter:
    """Writes (16, tiles, C) output tiles of a band into the NCHW (or channels-last) y."""

    def __init__(self, tiling: _Tiling, y: Tensor):
        self.t, self.y = tiling, y
        dh, dw = tiling.dilation
        self.rows = tiling.band * _TILE_OUT * dh
        self.cols = tiling.tiles_w * _TILE_OUT * dw
        self.flat = _workspace.take("winograd.out", y.shape[0] * self.rows * self.cols * y.shape[1], y)

    def write(self, yt: Tensor, t0: int, b: int) -> None:
        dh, dw = self.t.dilation
        n, c = self.y.shape[:2]
        rows = b * _TILE_OUT * dh
        image = self.flat[:n * rows * self.cols * c].view(n, rows, self.cols, c)
        image.view(n, b, _TILE_OUT, dh, self.t.tiles_w, _TILE_OUT, dw, c).copy_(
            yt.view(_TILE_OUT, _TILE_OUT, n, dh, b, dw, self.t.tiles_w, c).permute(2, 4, 0, 3, 6, 1, 5, 7))
        r0 = t0 * _TILE_OUT * dh
        valid = min(rows, self.t.out_h - r0)
        self.y[:, :, r0:r0 + valid].copy_(image[:, :valid, :self.t.out_w].permute(0, 3, 1, 2))


def _winograd_conv(x: Tensor, u: Tensor, bias: Tensor | None, pad: tuple, dilation: tuple,
                   out: Tensor | None = None) -> Tensor:
    """Stride-1 3x3 convolution of x (N, C, H, W) with transformed kernels u (36, C, C_out)
    (written into ``out`` if given)."""
    bt, at, _ = _winograd_matrices(x.dtype, x.device)
    c_in, c_out = u.shape[1:]
    tiling = _Tiling(x.shape, max(c_in, c_out), pad, dilation)
    y = out if out is not None else _empty_like_format(
        (x.shape[0], c_out, tiling.out_h, tiling.out_w), x, _memory_format(x))
    reader, writer = _TileReader(tiling, x, _TILE_IN, pad, "winograd.x"), _TileWriter(tiling, y)
    v_flat = _workspace.take("winograd.v", 36 * tiling.max_tiles * c_in, x)
    m_flat = _workspace.take("winograd.m", 36 * tiling.max_tiles * c_out, x)
    y_flat = _workspace.take("winograd.y", 16 * tiling.max_tiles * c_out, x)
    for t0, b in tiling.bands():
        tiles = reader.read(t0, b)                                        # (36, T, C)
        n_t = tiles.shape[1]
        v = torch.mm(bt, tiles.view(36, -1), out=v_flat[:tiles.numel()].view(36, -1))
        m = torch.bmm(v.view(36, n_t, c_in), u, out=m_flat[:36 * n_t * c_out].view(36, n_t, c_out))
        yt = torch.mm(at, m.view(36, -1), out=y_flat[:16 * n_t * c_out].view(16, -1))
        if bias is not None:
            yt.view(16, n_t, c_out).add_(bias)
        writer.write(yt, t0, b)
    return y


def _winograd_weight_grad(x: Tensor, gy: Tensor, geom: Geometry, w_shape: Sequence[int],
                          out: Tensor | None = None) -> Tensor:
    """dW (C_out, C, 3, 3) of a stride-1 3x3 convolution: dU_p = sum over tiles of
    (A dY A^T)_p^T (B^T d B)_p, then dW = G^T dU G (written into ``out`` if given)."""
    bt, at, gk = _winograd_matrices(x.dtype, x.device)
    c_in, c_out = x.shape[1], gy.shape[1]
    pad, dilation = geom.pad, geom.dilation
    tiling = _Tiling(x.shape, max(c_in, c_out), pad, dilation)
    x_reader = _TileReader(tiling, x, _TILE_IN, pad, "winograd.x")
    gy_reader = _TileReader(tiling, gy, _TILE_OUT, (0, 0), "winograd.gy")
    v_flat = _workspace.take("winograd.v", 36 * tiling.max_tiles * c_in, x)
    m_flat = _workspace.take("winograd.m", 36 * tiling.max_tiles * c_out, x)
    du = _workspace.take("winograd.du", 36 * c_out * c_in, x).view(36, c_out, c_in).zero_()
    for t0, b in tiling.bands():
        xt, gt = x_reader.read(t0, b), gy_reader.read(t0, b)
        n_t = xt.shape[1]
        v = torch.mm(bt, xt.view(36, -1), out=v_flat[:36 * n_t * c_in].view(36, -1))
        dm = torch.mm(at.t(), gt.view(16, -1), out=m_flat[:36 * n_t * c_out].view(36, -1))
        du.baddbmm_(dm.view(36, n_t, c_out).transpose(1, 2), v.view(36, n_t, c_in))
    gw = out if out is not None else x.new_empty(c_out, c_in, 3, 3)
    torch.mm(du.view(36, -1).t(), gk, out=gw.view(c_out * c_in, 9))
    return gw


def _winograd_forward(x: Tensor, weight: Tensor, bias: Tensor | None, geom: Geometry,
                      out: Tensor | None = None) -> Tensor:
    return _winograd_conv(x, _winograd_weights(weight), bias, geom.pad, geom.dilation, out)


def _winograd_input_grad(gy: Tensor, weight: Tensor, geom: Geometry, size: Sequence[int],
                         out: Tensor | None = None) -> Tensor:
    # The convolution of dY with the flipped, transposed kernel (stride 1: no size lost).
    u = _winograd_weights(weight, adjoint=True)
    return _winograd_conv(gy, u, None, _flipped_pad(geom.kernel, geom.pad, geom.dilation),
                          geom.dilation, out)


# ---------------------------------------------------------------------------------------
# path tables
# ---------------------------------------------------------------------------------------

class Kernels(NamedTuple):
    """One path's three operations, in convolution terms."""
    forward: Callable[..., Tensor]         # (x, w, bias, geom[, out])
    input_grad: Callable[..., Tensor]      # (gy, w, geom, x_size[, out])
    weight_grad: Callable[..., Tensor]     # (x, gy, geom, w_shape[, out])


KERNELS: dict[str, Kernels] = {
    "native": Kernels(_native_conv, _native_input_grad, _native_weight_grad),
    "gemm": Kernels(_gemm_forward, _gemm_input_grad, _gemm_weight_grad),
    "winograd": Kernels(_winograd_forward, _winograd_input_grad, _winograd_weight_grad),
}


def _one_path_conv(path: str) -> Callable[..., Tensor]:
    def run(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
            pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
        geom = Geometry(tuple(weight.shape[2:]), tuple(stride), tuple(pad), tuple(dilation), groups)
        if path == "native":
            return _native_conv(x, weight, bias, geom)
        return _Convolution.apply(_dense(x), weight, bias, geom, path, path)
    return run


def _one_path_deconv(path: str) -> Callable[..., Tensor]:
    def run(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
            pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
        geom = Geometry(tuple(weight.shape[2:]), tuple(stride), tuple(pad), tuple(dilation), groups)
        if path == "native":
            return _native_deconv(x, weight, bias, geom)
        return _Deconvolution.apply(_dense(x), weight, bias, geom, path, path)
    return run


# Every operation on one path, whatever tuning says (tests and benchmarks).
CONV_PATHS: dict[str, Callable[..., Tensor]] = {p: _one_path_conv(p) for p in PATHS}
DECONV_PATHS: dict[str, Callable[..., Tensor]] = {p: _one_path_deconv(p) for p in PATHS}
