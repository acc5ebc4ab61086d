"""Forward and backward time of every conv_ops path on the shapes that set
choose_path's thresholds (the dilated VGG-16 front-end at crop 500, and typical
Caffe convolutions and deconvolutions), on CPU with 2 threads.

    python benchmarks/bench_conv_paths.py [--repeats 3] [--only NAME ...] [--threads 2]

Prints, per shape, each path's forward and backward (input + weight grad)
milliseconds, the effective GFLOP/s (direct-algorithm FLOPs, layers/flops.py)
and the path choose_path picks; plus the 4096^2 GEMM GFLOP/s and the load.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from fcnwild.layers import conv_ops, flops

# name: (transposed, x shape, w shape, stride, pad, dilation, groups)
SHAPES = {
    "conv1_1": (False, (1, 3, 500, 500), (64, 3, 3, 3), 1, 0, 1, 1),
    "conv1_2": (False, (1, 64, 498, 498), (64, 64, 3, 3), 1, 0, 1, 1),
    "conv2_1": (False, (1, 64, 248, 248), (128, 64, 3, 3), 1, 0, 1, 1),
    "conv2_2": (False, (1, 128, 246, 246), (128, 128, 3, 3), 1, 0, 1, 1),
    "conv3_2": (False, (1, 256, 120, 120), (256, 256, 3, 3), 1, 0, 1, 1),
    "conv4_2": (False, (1, 512, 56, 56), (512, 512, 3, 3), 1, 0, 1, 1),
    "conv5_1": (False, (1, 512, 52, 52), (512, 512, 3, 3), 1, 0, 2, 1),
    "fc6": (False, (1, 512, 40, 40), (4096, 512, 7, 7), 1, 0, 4, 1),
    "fc7": (False, (1, 4096, 16, 16), (4096, 4096, 1, 1), 1, 0, 1, 1),
    "final": (False, (1, 4096, 16, 16), (19, 4096, 1, 1), 1, 0, 1, 1),
    "upsample x8": (True, (1, 19, 16, 16), (19, 1, 16, 16), 8, 4, 1, 19),
    "small 3x3 c16": (False, (2, 16, 64, 64), (16, 16, 3, 3), 1, 1, 1, 1),
    "small 3x3 c8 d2": (False, (1, 8, 100, 100), (8, 8, 3, 3), 1, 2, 2, 1),
    "3x3 d2 g2": (False, (1, 64, 56, 56), (64, 32, 3, 3), 1, 2, 2, 2),
    "5x5 (alexnet conv2)": (False, (1, 96, 27, 27), (256, 48, 5, 5), 1, 2, 1, 2),
    "7x7 s2 (stem)": (False, (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1),
    "3x3 s2": (False, (1, 64, 56, 56), (64, 64, 3, 3), 2, 1, 1, 1),
    "1x1 c64 big map": (False, (1, 64, 248, 248), (64, 64, 1, 1), 1, 0, 1, 1),
    "deconv k4 s2 c21 (fcn)": (True, (1, 21, 34, 34), (21, 21, 4, 4), 2, 0, 1, 1),
    "deconv k64 s32 c21 (fcn32)": (True, (1, 21, 16, 16), (21, 21, 64, 64), 32, 0, 1, 1),
    "deconv k4 s2 c512": (True, (1, 512, 32, 32), (512, 256, 4, 4), 2, 1, 1, 1),
    "deconv 3x3 s1 c64": (True, (1, 64, 60, 60), (64, 64, 3, 3), 1, 1, 1, 1),
}


# torch's CPU backward of these takes minutes (its slow dilated path): forward only
# unless --time-slow.
SLOW_NATIVE_BACKWARD = {"fc6"}


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def shape_flops(transposed: bool, x_shape, w_shape, stride, pad, dilation, groups) -> int:
    kernel = w_shape[2:]
    if transposed:
        return flops.deconvolution_flops(x_shape[1], w_shape[1] * groups, kernel, x_shape[2:], groups,
                                         x_shape[0])
    out = [(s + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for s, k in zip(x_shape[2:], kernel)]
    return flops.convolution_flops(x_shape[1], w_shape[0], kernel, out, groups, x_shape[0])


def applicable(path: str, transposed: bool, w_shape, stride: int, groups: int) -> bool:
    if path == "winograd":
        return tuple(w_shape[2:]) == (3, 3) and stride == 1 and groups == 1
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="shape names to run (default: all)")
    parser.add_argument("--paths", nargs="*", default=["native", "gemm", "winograd"])
    parser.add_argument("--time-slow", action="store_true",
                        help="also time the native backward of " + ", ".join(sorted(SLOW_NATIVE_BACKWARD)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load {os.getloadavg()[0]:.2f}; GEMM 4096^2 {flops.gemm_gflops():.1f} GFLOP/s; "
          f"{args.threads} threads")
    print(f"{'shape':28s} {'chosen':9s} " + " ".join(f"{p + ' fwd/bwd ms (GFLOP/s)':>34s}" for p in args.paths))
    for name, (transposed, x_shape, w_shape, s, p, d, g) in SHAPES.items():
        if args.only and name not in args.only:
            continue
        nd = len(x_shape) - 2
        conv_args = ((s,) * nd, (p,) * nd, (d,) * nd, g)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(x_shape, generator=gen)
        w = torch.randn(w_shape, generator=gen) * 0.01
        fl = shape_flops(transposed, x_shape, w_shape, s, p, d, g)
        chosen = conv_ops.choose_path(x, w, *conv_args, transposed=transposed)
        cells = []
        for path in args.paths:
            if not applicable(path, transposed, w_shape, s, g):
                cells.append(f"{'-':>34s}")
                continue
            fn = (conv_ops.DECONV_PATHS if transposed else conv_ops.CONV_PATHS)[path]
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            gy = torch.randn(fn(x, w, None, *conv_args).shape, generator=gen)
            with torch.no_grad():
                t_fwd = best_time(lambda: fn(x, w, None, *conv_args), args.repeats)

            if path == "native" and name in SLOW_NATIVE_BACKWARD and not args.time_slow:
                cells.append(f"{t_fwd * 1e3:8.1f}/{'slow':>8s} ({fl / t_fwd / 1e9:5.0f}/{'-':>5s})")
                continue

            def step() -> None:
                xr.grad = wr.grad = None
                fn(xr, wr, None, *conv_args).backward(gy)
            t_bwd = max(best_time(step, args.repeats) - t_fwd, 1e-9)
            cells.append(f"{t_fwd * 1e3:8.1f}/{t_bwd * 1e3:8.1f} ({fl / t_fwd / 1e9:5.0f}/{2 * fl / t_bwd / 1e9:5.0f})")
        print(f"{name:28s} {chosen:9s} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
