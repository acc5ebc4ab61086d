"""FLOP counts of the GEMM-shaped layers, and the machine's GEMM speed to compare with.

Counts are the direct algorithm's multiply-adds x 2 taken from the layer
shapes, as Caffe's ``time`` figures are usually quoted, whatever algorithm
actually runs (a Winograd convolution does fewer multiplications but is
credited with the direct count). A training step costs the forward once,
plus once more for the input grad and once more for the weight grad when
they are needed.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch


def convolution_flops(in_channels: int, out_channels: int, kernel: Sequence[int],
                      out_size: Sequence[int], groups: int = 1, batch: int = 1) -> int:
    """Forward FLOPs of a Convolution: 2 * K * C_in/g * C_out * H_out * W_out per image."""
    return (2 * math.prod(kernel) * (in_channels // groups) * out_channels
            * math.prod(out_size) * batch)


def deconvolution_flops(in_channels: int, out_channels: int, kernel: Sequence[int],
                        in_size: Sequence[int], groups: int = 1, batch: int = 1) -> int:
    """Forward FLOPs of a Deconvolution (the adjoint GEMM of a convolution):
    2 * K * C_in * C_out/g * H_in * W_in per image."""
    return (2 * math.prod(kernel) * in_channels * (out_channels // groups)
            * math.prod(in_size) * batch)


def inner_product_flops(rows: int, inputs: int, outputs: int) -> int:
    """Forward FLOPs of an InnerProduct layer: 2 * M * K * N."""
    return 2 * rows * inputs * outputs


def train_step_flops(forward: int, input_grad: bool = True, weight_grad: bool = True) -> int:
    """Forward + backward FLOPs of one layer: each needed gradient costs one more forward."""
    return forward * (1 + int(input_grad) + int(weight_grad))


def gemm_gflops(size: int = 4096, repeats: int = 5, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> float:
    """Best GFLOP/s of a size x size x size ``torch.mm`` over ``repeats`` runs (after one warm-up)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9
