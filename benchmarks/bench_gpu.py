"""The front-end train step of benchmarks/bench_frontend.py on a GPU (speed issue).

Same net (fyu/dilation front-end, full width, 19 classes, bilinear x8
Deconvolution, SoftmaxWithLoss) through fcnwild's conv_ops, at batch 8 and crop
500, in two precisions:

* fp32 with TF32 off (Caffe's arithmetic; the reference fixtures' tolerances hold);
* bf16 autocast (weights and gradients stay fp32).

Prints images/s, achieved TFLOP/s (FLOPs from the layer shapes, layers/flops.py),
and the fraction of the card's peak twice: of a large matrix product of the same
precision measured in the same run, and of the datasheet's dense peak where the
card is known (H100 SXM / H200: 67 fp32, 989 bf16 TFLOP/s; H100 PCIe: 51 / 756).

    python benchmarks/bench_gpu.py [--batch 8] [--crop 500] [--steps 10]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bench_frontend import Frontend, frontend_layers, make_batch, step_flops
from fcnwild.layers import flops

DATASHEET_TFLOPS = {   # dense, no sparsity: (fp32, bf16)
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),          # SXM / HBM3
    "H200": (67.0, 989.0),
}


def datasheet_peak(name: str) -> tuple[float, float] | None:
    for key, peak in DATASHEET_TFLOPS.items():
        if key in name:
            return peak
    return None


def time_steps(net: Frontend, data, label, steps: int, bf16: bool) -> float:
    def step() -> None:
        for p in net.parameters():
            p.grad = None
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else \
            contextlib.nullcontext()
        with autocast:
            loss = net(data, label)
        loss.backward()
    for _ in range(2):                  # warm-up: cuDNN's algorithm search, allocator
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    total, _ = step_flops(frontend_layers(False), (args.batch, 3, args.crop, args.crop))
    print(f"{name}, torch {torch.__version__}, front-end crop {args.crop}, batch {args.batch}: "
          f"{total / 1e12:.2f} TFLOP per step")
    net = Frontend(args.crop, padded=False, fast=True).cuda()
    data, label = make_batch(args.crop, False, False, batch=args.batch)
    data, label = data.cuda(), label.cuda()
    sheet = datasheet_peak(name)
    for precision, bf16, dtype in (("fp32 (TF32 off)", False, torch.float32),
                                   ("bf16 autocast", True, torch.bfloat16)):
        seconds = time_steps(net, data, label, args.steps, bf16)
        achieved = total / seconds / 1e12
        gemm = flops.gemm_gflops(8192, 10, dtype=dtype, device="cuda") / 1e3
        line = (f"{precision:16s}: {seconds * 1e3:7.1f} ms/step, {args.batch / seconds:6.1f} "
                f"images/s, {achieved:6.1f} TFLOP/s = {achieved / gemm:.2f} of the measured "
                f"8192^3 GEMM ({gemm:.1f} TFLOP/s)")
        if sheet is not None:
            peak = sheet[1] if bf16 else sheet[0]
            line += f", {achieved / peak:.2f} of the datasheet's {peak:.0f}"
        print(line, flush=True)
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
