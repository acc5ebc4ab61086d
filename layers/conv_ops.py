"""Convolution and transposed convolution as used by the Convolution and
Deconvolution layers (Caffe semantics: zero padding, floor output size).

Everything spatial is given per axis (tuples of length 1, 2 or 3). Weight
layouts are Caffe's: convolution (C_out, C_in/g, *k), deconvolution
(C_in, C_out/g, *k). Outputs keep the input's memory format (NCHW or
channels-last), as torch's own convolutions do.

``convolution`` and ``deconvolution`` take one of three paths per call;
``choose_path`` names it (tests and benchmarks check the choice):

* ``winograd`` -- 2-D 3x3, stride 1, one group, at least 64 input and output
  channels and 128 output tiles (below, oneDNN is faster), any pad and
  dilation, CPU, float32/float64: Winograd F(4x4, 3x3)
  (Lavin & Gray 2016) for forward, input grad and weight grad: 36 batched
  GEMMs, (tiles x C_in) x (C_in x C_out), do the work of 144 multiply-adds per
  4x4 output tile. Dilation is space-to-batch folded into the tile gather
  (element a of a phase-i tile reads input row (4t + a) * d + i), so a dilated
  3x3 costs what an undilated one does. The map goes through in bands of tile
  rows, channels-last inside a band, so the memory-bound transforms run in
  cache. Interpolation points 0, 1, -1, 1/2, -2 (and infinity) keep float32
  within ~3e-6 of a float64 reference, relative to the output's max (direct:
  ~2e-6); the textbook points 0, +-1, +-2 give ~1e-5, Caffe's forward tolerance.
* ``gemm`` -- explicit im2col + GEMM, one image at a time, as Caffe does (a
  1x1 kernel needs no im2col: the image is the column matrix): 1x1
  convolutions (fc7, final), kernels larger than 3x3 with at least 512
  outputs per group (fc6: 7x7, dilation 4, 512->4096 on 40x40, whose torch
  CPU backward takes minutes), very shallow inputs (conv1_1: 3 channels x 3x3,
  where oneDNN runs at ~10 GFLOP/s) and every strided Deconvolution (Caffe's
  col2im of a GEMM). A stride-1 Deconvolution is the convolution with the
  flipped, transposed kernel and goes through the convolution rules.
* ``native`` -- torch's own kernels (oneDNN on CPU) for everything else:
  strided or grouped 3x3, mid-size kernels with few outputs, other devices,
  other dtypes, 1-D and 3-D.

Measured on the 2-core AVX2 machine, 2 threads, float32, quiet (load < 2),
forward / backward effective GFLOP/s (2*K*C_in*C_out*H_out*W_out per pass;
4096^2 torch.mm: 140-180 GFLOP/s, varying between runs):

    layer (crop 500)          native      winograd     gemm
    conv1_2  64->64  @498    84 / 91     116 / 101
    conv2_1  64->128 @248   107 / 139    179 / 157
    conv2_2 128->128 @246   177 / 131    176 / 266
    conv3_2 256->256 @120   179 / 153    289 / 292
    conv4_2 512->512 @56    149 / 177    315 / 243
    conv5_1 512 dil 2 @52   171 / 139    300 / 168
    fc6  7x7 dil 4 @40      ~55 / ~0.7*                 124 / 136
    fc7  1x1 4096->4096     (noisy)                     105 / 110

    * torch's dilated CPU backward for fc6: ~150 s (issue 7); plain PyTorch
      needs 107 s for the whole train step here, conv_ops 4.2-4.7 s.

benchmarks/bench_conv_paths.py prints this table for any shape;
benchmarks/bench_frontend.py times the whole train step.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_FAST_DTYPES = (torch.float32, torch.float64)

# Winograd pays off once its GEMMs outweigh the tile transforms (enough
# channels) and the transformed kernels, 4x the size of the plain ones, are
# reused over enough tiles: at 512 channels oneDNN wins below ~128 tiles
# (e.g. a 40x40 output), Winograd by 1.5x above ~144; below 64 channels
# oneDNN wins at any size.
_WINOGRAD_MIN_CHANNELS = 64
_WINOGRAD_MIN_TILES = 128
# For a kernel larger than 3x3, im2col + GEMM beats oneDNN once the GEMM dwarfs
# the im2col copy (each column element feeds 2 * C_out/g FLOPs); one image's
# column matrix must stay small next to the activations.
_GEMM_MIN_OUT_CHANNELS = 512
# oneDNN is slow on a very shallow input (VGG's conv1_1: 3 channels x 3x3 = 27
# values per output pixel), where im2col is cheap.
_GEMM_MAX_SHALLOW_K = 32
_GEMM_MAX_COL_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------

def choose_path(x: Tensor, weight: Tensor, stride: Sequence[int], pad: Sequence[int],
                dilation: Sequence[int], groups: int, transposed: bool = False) -> str:
    """Name of the path ``convolution`` (or ``deconvolution`` if ``transposed``) takes."""
    if (x.device.type != "cpu" or x.dtype not in _FAST_DTYPES or weight.dtype != x.dtype
            or len(stride) != 2 or x.dim() != 4):
        return "native"
    kernel = tuple(weight.shape[2:])
    if not transposed:
        return _conv_path(x, weight.shape[0], kernel, stride, pad, dilation, groups)
    if all(s == 1 for s in stride):
        # A stride-1 deconvolution is a convolution with the flipped kernel.
        return _conv_path(x, weight.shape[1] * groups, kernel, stride,
                          _flipped_pad(kernel, pad, dilation), dilation, groups)
    col_bytes = x.element_size() * math.prod(weight.shape[1:]) * groups * x.shape[2] * x.shape[3]
    return "gemm" if col_bytes <= _GEMM_MAX_COL_BYTES else "native"


def _conv_path(x: Tensor, c_out: int, kernel: tuple, stride: Sequence[int], pad: Sequence[int],
               dilation: Sequence[int], groups: int) -> str:
    c_in = x.shape[1]
    out_size = [(size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, k, s, p, d in zip(x.shape[2:], kernel, stride, pad, dilation)]
    if min(out_size) < 1 or x.numel() == 0:
        return "native"                     # torch reports the bad shape
    if (kernel == (3, 3) and tuple(stride) == (1, 1) and groups == 1
            and min(c_in, c_out) >= _WINOGRAD_MIN_CHANNELS
            and _winograd_tiles(x.shape[0], out_size, dilation) >= _WINOGRAD_MIN_TILES):
        return "winograd"
    if kernel == (1, 1) and tuple(pad) == (0, 0):
        return "gemm"
    depth = c_in // groups * kernel[0] * kernel[1]          # column-matrix rows per group
    if x.element_size() * depth * groups * math.prod(out_size) > _GEMM_MAX_COL_BYTES:
        return "native"
    if depth <= _GEMM_MAX_SHALLOW_K and tuple(stride) == (1, 1):
        return "gemm"
    if kernel[0] * kernel[1] > 9 and c_out // groups >= _GEMM_MIN_OUT_CHANNELS:
        return "gemm"
    return "native"


def convolution(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Caffe's Convolution forward; weight is (C_out, C_in/groups, *kernel)."""
    path = choose_path(x, weight, stride, pad, dilation, groups)
    return CONV_PATHS[path](x, weight, bias, tuple(stride), tuple(pad), tuple(dilation), groups)


def deconvolution(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                  pad: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Caffe's Deconvolution forward; weight is (C_in, C_out/groups, *kernel)."""
    path = choose_path(x, weight, stride, pad, dilation, groups, transposed=True)
    return DECONV_PATHS[path](x, weight, bias, tuple(stride), tuple(pad), tuple(dilation), groups)


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
# native
# ---------------------------------------------------------------------------------------

def _native_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple, pad: tuple,
                 dilation: tuple, groups: int) -> Tensor:
    return _CONV[len(stride)](x, weight, bias, stride, pad, dilation, groups)


def _native_deconv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple, pad: tuple,
                   dilation: tuple, groups: int) -> Tensor:
    return _CONV_T[len(stride)](x, weight, bias, stride, pad, 0, groups, dilation)


# ---------------------------------------------------------------------------------------
# memory format
# ---------------------------------------------------------------------------------------

def _memory_format(x: Tensor) -> torch.memory_format:
    """Like torch's own convolutions, answer in the input's memory format."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dense(t: Tensor) -> Tensor:
    """t itself when it is contiguous in either memory format, else a contiguous copy."""
    return t if _memory_format(t) == torch.channels_last else t.contiguous()


def _empty_like_format(shape: Sequence[int], like: Tensor, fmt: torch.memory_format) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------
# gemm: im2col + GEMM, one image at a time (Caffe's forward_cpu_gemm & co.)
# ---------------------------------------------------------------------------------------

class _Geometry:
    """Kernel, stride, pad, dilation and groups of one 2-D convolution."""

    def __init__(self, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple, groups: int):
        self.kernel, self.stride, self.pad, self.dilation, self.groups = (
            kernel, stride, pad, dilation, groups)
        # A 1x1, stride-1, unpadded kernel needs no column matrix: the image is one.
        self.identity_cols = kernel == (1, 1) and stride == (1, 1) and pad == (0, 0)

    def conv_out_size(self, size: Sequence[int]) -> tuple:
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(size, self.kernel, self.stride, self.pad, self.dilation))

    def deconv_out_size(self, size: Sequence[int]) -> tuple:
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + 1 for n, k, s, p, d in
                     zip(size, self.kernel, self.stride, self.pad, self.dilation))

    def cols(self, image: Tensor) -> Tensor:
        """(C, H, W) image -> (groups, C/g * kh * kw, H_out * W_out) column matrices."""
        if self.identity_cols:
            col = image.reshape(image.shape[0], -1)
        else:
            col = F.unfold(image.unsqueeze(0), self.kernel, self.dilation, self.pad, self.stride)[0]
        return col.view(self.groups, col.shape[0] // self.groups, col.shape[1])

    def image(self, col: Tensor, size: Sequence[int]) -> Tensor:
        """(C * kh * kw, H_out * W_out) column matrix -> summed-back (C, H, W) image."""
        if self.identity_cols:
            return col.view(-1, *size)
        return F.fold(col.unsqueeze(0), tuple(size), self.kernel, self.dilation, self.pad,
                      self.stride)[0]


def _gemm_conv(x: Tensor, weight: Tensor, geom: _Geometry) -> Tensor:
    """Convolution: y_n = W @ im2col(x_n), per group."""
    g, c_out = geom.groups, weight.shape[0]
    fmt = _memory_format(x)
    y = _empty_like_format((x.shape[0], c_out) + geom.conv_out_size(x.shape[2:]), x, fmt)
    w = weight.reshape(g, c_out // g, -1)
    for n in range(x.shape[0]):
        cols = geom.cols(x[n])
        if fmt == torch.channels_last:
            # y_n^T = cols^T W^T: the GEMM writes the channels-last image directly.
            _matmul_into_hwc(cols.transpose(1, 2), w.transpose(1, 2), y[n])
        else:
            torch.bmm(w, cols, out=y[n].view(g, c_out // g, -1))
    return y


def _gemm_conv_transposed(gy: Tensor, weight: Tensor, geom: _Geometry, size: Sequence[int]) -> Tensor:
    """The adjoint of ``_gemm_conv`` (its input grad, a Deconvolution's forward):
    x_n = col2im(W^T @ y_n), per group; ``size`` is x's spatial size."""
    g, c_out = geom.groups, weight.shape[0]
    w = weight.reshape(g, c_out // g, -1)
    fmt = _memory_format(gy)
    x = _empty_like_format((gy.shape[0], weight.shape[1] * g) + tuple(size), gy, fmt)
    for n in range(gy.shape[0]):
        dy = gy[n].reshape(g, c_out // g, -1)
        if geom.identity_cols and fmt == torch.channels_last:
            _matmul_into_hwc(dy.transpose(1, 2), w, x[n])
        else:
            col = torch.bmm(w.transpose(1, 2), dy)
            x[n] = geom.image(col.view(-1, col.shape[2]), size)
    return x


def _matmul_into_hwc(a: Tensor, b: Tensor, image: Tensor) -> None:
    """Per-group a @ b, (g, H*W, C/g), written into one channels-last (C, H, W) image."""
    g = a.shape[0]
    hwc = image.permute(1, 2, 0).view(-1, g, image.shape[0] // g)
    if g == 1:
        torch.mm(a[0], b[0], out=hwc[:, 0])
    else:
        hwc.copy_(torch.bmm(a, b).transpose(0, 1))


def _gemm_conv_weight_grad(x: Tensor, gy: Tensor, weight_shape: Sequence[int],
                           geom: _Geometry) -> Tensor:
    """dW = sum_n dy_n @ im2col(x_n)^T, per group."""
    g, c_out = geom.groups, weight_shape[0]
    gw = gy.new_empty(weight_shape)
    gw_g = gw.view(g, c_out // g, -1)
    for n in range(x.shape[0]):
        dy, cols = gy[n].reshape(g, c_out // g, -1), geom.cols(x[n]).transpose(1, 2)
        # The first image writes dW directly: fc6's dW is 411 MB, not worth zeroing first.
        if n == 0:
            torch.bmm(dy, cols, out=gw_g)
        else:
            gw_g.baddbmm_(dy, cols)
    return gw


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    if bias is not None:
        y += bias.view(1, -1, *([1] * (y.dim() - 2)))
    return y


def _bias_grad(gy: Tensor, ctx: FunctionCtx, index: int) -> Tensor | None:
    return gy.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[index] else None


class _GemmConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geom: _Geometry) -> Tensor:
        need_x, need_w, _ = ctx.needs_input_grad[:3]
        # Keep only what backward reads: x for the weight grad, W for the input grad.
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.geom, ctx.has_bias, ctx.in_size = geom, bias is not None, x.shape[2:]
        ctx.weight_shape = weight.shape
        return _add_bias(_gemm_conv(_dense(x), weight, geom), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, weight = ctx.saved_tensors
        gy = _dense(gy)
        gx = _gemm_conv_transposed(gy, weight, ctx.geom, ctx.in_size) if weight is not None else None
        gw = (_gemm_conv_weight_grad(_dense(x), gy, ctx.weight_shape, ctx.geom)
              if x is not None else None)
        return gx, gw, _bias_grad(gy, ctx, 2), None


class _GemmDeconvolution(torch.autograd.Function):
    """Caffe's Deconvolution: the adjoint of the convolution whose weight it holds."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geom: _Geometry) -> Tensor:
        need_x, need_w, _ = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.geom, ctx.has_bias = geom, bias is not None
        ctx.weight_shape = weight.shape
        y = _gemm_conv_transposed(_dense(x), weight, geom, geom.deconv_out_size(x.shape[2:]))
        return _add_bias(y, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, weight = ctx.saved_tensors
        gy = _dense(gy)
        gx = _gemm_conv(gy, weight, ctx.geom) if weight is not None else None
        gw = (_gemm_conv_weight_grad(gy, _dense(x), ctx.weight_shape, ctx.geom)
              if x is not None else None)
        return gx, gw, _bias_grad(gy, ctx, 2), None


def _gemm_conv_path(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple, pad: tuple,
                    dilation: tuple, groups: int) -> Tensor:
    geom = _Geometry(tuple(weight.shape[2:]), stride, pad, dilation, groups)
    return _GemmConvolution.apply(x, weight, bias, geom)


def _gemm_deconv_path(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple, pad: tuple,
                      dilation: tuple, groups: int) -> Tensor:
    geom = _Geometry(tuple(weight.shape[2:]), stride, pad, dilation, groups)
    return _GemmDeconvolution.apply(x, weight, bias, geom)


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


def _winograd_weights(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) kernels -> (36, C_in, C_out) transformed kernels."""
    c_out, c_in = weight.shape[:2]
    _, _, gk = _winograd_matrices(weight.dtype, weight.device)
    return (gk @ weight.reshape(c_out * c_in, 9).t()).view(36, c_out, c_in).transpose(1, 2)


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

    def __init__(self, tiling: _Tiling, x: Tensor, size: int, pad: tuple):
        self.t, self.x, self.size, self.pad = tiling, x, size, pad
        dh, dw = tiling.dilation
        self.rows = ((tiling.band - 1) * _TILE_OUT + size) * dh
        cols = ((tiling.tiles_w - 1) * _TILE_OUT + size) * dw
        c = x.shape[1]
        # Zeros once: the padding columns are never written; padding rows are
        # cleared per band because an earlier band may have filled them.
        self.image = x.new_zeros(x.shape[0], self.rows, cols, c)
        w = x.shape[3]
        self.c0, self.src_c0 = max(pad[1], 0), max(-pad[1], 0)
        self.ncols = min(w - self.src_c0, cols - self.c0)
        self.flat = x.new_empty(size * size * tiling.max_tiles * c)

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
        self.flat = y.new_empty(y.shape[0] * self.rows * self.cols * y.shape[1])

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


def _winograd_conv(x: Tensor, u: Tensor, bias: Tensor | None, pad: tuple, dilation: tuple) -> Tensor:
    """Stride-1 3x3 convolution of x (N, C, H, W) with transformed kernels u (36, C, C_out)."""
    bt, at, _ = _winograd_matrices(x.dtype, x.device)
    c_in, c_out = u.shape[1:]
    tiling = _Tiling(x.shape, max(c_in, c_out), pad, dilation)
    y = _empty_like_format((x.shape[0], c_out, tiling.out_h, tiling.out_w), x, _memory_format(x))
    reader, writer = _TileReader(tiling, x, _TILE_IN, pad), _TileWriter(tiling, y)
    v_flat = x.new_empty(36 * tiling.max_tiles * c_in)
    m_flat = x.new_empty(36 * tiling.max_tiles * c_out)
    y_flat = x.new_empty(16 * tiling.max_tiles * c_out)
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


def _winograd_weight_grad(x: Tensor, gy: Tensor, pad: tuple, dilation: tuple) -> Tensor:
    """dW (C_out, C, 3, 3) of a stride-1 3x3 convolution: dU_p = sum over tiles of
    (A dY A^T)_p^T (B^T d B)_p, then dW = G^T dU G."""
    bt, at, gk = _winograd_matrices(x.dtype, x.device)
    c_in, c_out = x.shape[1], gy.shape[1]
    tiling = _Tiling(x.shape, max(c_in, c_out), pad, dilation)
    x_reader = _TileReader(tiling, x, _TILE_IN, pad)
    gy_reader = _TileReader(tiling, gy, _TILE_OUT, (0, 0))
    du = x.new_zeros(36, c_out, c_in)
    for t0, b in tiling.bands():
        xt, gt = x_reader.read(t0, b), gy_reader.read(t0, b)
        n_t = xt.shape[1]
        v = (bt @ xt.view(36, -1)).view(36, n_t, c_in)
        dm = (at.t() @ gt.view(16, -1)).view(36, n_t, c_out)
        du.baddbmm_(dm.transpose(1, 2), v)
    return (du.view(36, -1).t() @ gk).view(c_out, c_in, 3, 3)


class _WinogradConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                pad: tuple, dilation: tuple) -> Tensor:
        need_x, need_w, _ = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.pad, ctx.dilation, ctx.has_bias = pad, dilation, bias is not None
        return _winograd_conv(x, _winograd_weights(weight), bias, pad, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = None
        if weight is not None:
            # The input grad is the convolution of dY with the flipped, transposed kernel.
            flipped_pad = tuple(2 * d - p for p, d in zip(ctx.pad, ctx.dilation))
            u = _winograd_weights(weight.flip(2, 3).transpose(0, 1))
            gx = _winograd_conv(gy, u, None, flipped_pad, ctx.dilation)
        if x is not None:
            gw = _winograd_weight_grad(x, gy, ctx.pad, ctx.dilation)
        return gx, gw, _bias_grad(gy, ctx, 2), None, None


def _winograd_conv_path(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple,
                        pad: tuple, dilation: tuple, groups: int) -> Tensor:
    return _WinogradConvolution.apply(x, weight, bias, pad, dilation)


def _winograd_deconv_path(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple,
                          pad: tuple, dilation: tuple, groups: int) -> Tensor:
    # A stride-1, one-group deconvolution is the convolution with the flipped,
    # transposed kernel; autograd carries the weight grad back through the flip.
    conv_weight = weight.transpose(0, 1).flip(2, 3)
    return _WinogradConvolution.apply(x, conv_weight, bias,
                                      _flipped_pad(weight.shape[2:], pad, dilation), dilation)


CONV_PATHS: dict[str, Callable[..., Tensor]] = {
    "native": _native_conv, "gemm": _gemm_conv_path, "winograd": _winograd_conv_path}
DECONV_PATHS: dict[str, Callable[..., Tensor]] = {
    "native": _native_deconv, "gemm": _gemm_deconv_path, "winograd": _winograd_deconv_path}
