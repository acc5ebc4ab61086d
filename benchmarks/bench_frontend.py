"""Train-step speed of the full-width dilated VGG-16 front-end on CPU: plain torch
(nn.Conv2d with native dilation, nn.ConvTranspose2d) against fcnwild's conv_ops.

The net is Yu & Koltun's front-end training net as fyu/dilation builds it
(network.py / train.py with --up): unpadded 3x3 convolutions, pool1-3, conv5
dilation 2, fc6 7x7 dilation 4, fc7, final 1x1 to the classes, in-place ReLU
(Dropout out of place, see Frontend.forward), a fixed bilinear Deconvolution (kernel 16, stride 8, pad 4,
group = classes, no bias, lr_mult 0) and SoftmaxWithLoss (ignore 255, VALID
normalization) on the central (crop - 372)^2 labels. At crop 500 that is
~626 GFLOP per forward+backward. ``--padded`` builds the padded layout of
tests' dilation_frontend_small reference (pad 1 / 2 / 12, deconvolution pad 0
and Crop offset 4, labels at full crop size) at full width instead.

Each implementation runs in its own subprocess so that its peak RSS
(ru_maxrss) is its own. Prints seconds per step, speedup, FLOPs per step
(from the layer shapes, layers/flops.py), achieved GFLOP/s, the GEMM GFLOP/s
of a 4096^2 torch.mm measured in the same run, per-layer forward/backward
times of the fast version, peak RSS and the load average.

    python benchmarks/bench_frontend.py [--crop 500] [--steps 3] [--plain-steps 1] [--skip-plain]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnwild.layers import conv_ops, flops
from fcnwild.tools.allocator import retain_freed_memory

THREADS = 2
CLASSES = 19
LABEL_MARGIN = 186          # fyu/dilation: labels are the crop minus 186 pixels per side


@dataclass
class Conv:
    name: str
    c_in: int
    c_out: int
    kernel: int
    dilation: int = 1
    pad: int = 0
    dropout: bool = False
    relu: bool = True


@dataclass
class Pool:
    name: str


def frontend_layers(padded: bool) -> list:
    """The front-end up to ``final``, as (Conv | Pool) entries."""
    def conv(name: str, c_in: int, c_out: int, kernel: int = 3, dilation: int = 1, **kw) -> Conv:
        pad = dilation * (kernel - 1) // 2 if padded and kernel > 1 else 0
        return Conv(name, c_in, c_out, kernel, dilation, pad, **kw)
    return [
        conv("conv1_1", 3, 64), conv("conv1_2", 64, 64), Pool("pool1"),
        conv("conv2_1", 64, 128), conv("conv2_2", 128, 128), Pool("pool2"),
        conv("conv3_1", 128, 256), conv("conv3_2", 256, 256), conv("conv3_3", 256, 256), Pool("pool3"),
        conv("conv4_1", 256, 512), conv("conv4_2", 512, 512), conv("conv4_3", 512, 512),
        conv("conv5_1", 512, 512, dilation=2), conv("conv5_2", 512, 512, dilation=2),
        conv("conv5_3", 512, 512, dilation=2),
        conv("fc6", 512, 4096, kernel=7, dilation=4, dropout=True),
        conv("fc7", 4096, 4096, kernel=1, dropout=True),
        conv("final", 4096, CLASSES, kernel=1, relu=False),
    ]


def bilinear_kernel(size: int) -> Tensor:
    """Caffe's bilinear filler for one (size x size) upsampling kernel."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    ramp = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return torch.outer(ramp, ramp).float()


class Frontend(nn.Module):
    """The front-end train net; ``fast`` routes convolutions through conv_ops."""

    def __init__(self, crop: int, padded: bool, fast: bool):
        super().__init__()
        self.fast, self.padded, self.crop = fast, padded, crop
        self.paths: dict[str, str] = {}          # conv_ops path per layer (fast only)
        self.layers = frontend_layers(padded)
        self.convs = nn.ModuleDict()
        gen = torch.Generator().manual_seed(0)
        for layer in self.layers:
            if isinstance(layer, Conv):
                m = nn.Conv2d(layer.c_in, layer.c_out, layer.kernel, padding=layer.pad,
                              dilation=layer.dilation)
                std = 0.001 if layer.name == "final" else 0.01
                with torch.no_grad():
                    m.weight.normal_(0, std, generator=gen)
                    m.bias.zero_()
                self.convs[layer.name] = m
        self.upsample = nn.ConvTranspose2d(CLASSES, CLASSES, 16, stride=8, groups=CLASSES, bias=False,
                                           padding=0 if padded else 4)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_kernel(16).expand(CLASSES, 1, 16, 16))
        self.upsample.weight.requires_grad_(False)          # lr_mult 0

    def run_conv(self, layer: Conv, x: Tensor) -> Tensor:
        m = self.convs[layer.name]
        if self.fast:
            d, p = (layer.dilation,) * 2, (layer.pad,) * 2
            self.paths[layer.name] = "/".join(conv_ops.choose_plan(x, m.weight, (1, 1), p, d, 1))
            return conv_ops.convolution(x, m.weight, m.bias, (1, 1), p, d, 1)
        return m(x)

    def run_upsample(self, x: Tensor) -> Tensor:
        m = self.upsample
        if self.fast:
            self.paths["upsample"] = "/".join(conv_ops.choose_plan(
                x, m.weight, m.stride, m.padding, m.dilation, m.groups, transposed=True))
            return conv_ops.deconvolution(x, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        return m(x)

    def forward(self, data: Tensor, label: Tensor, marks: "Marks | None" = None) -> Tensor:
        x = data
        for layer in self.layers:
            start = time.perf_counter()
            if isinstance(layer, Pool):
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)       # Caffe rounds pooled sizes up
            else:
                x = self.run_conv(layer, x)
                if layer.relu:
                    x = F.relu_(x)
                if layer.dropout:
                    # Not in place: torch's ReLU backward reads its output, which
                    # autograd forbids modifying (Caffe's does not care). fc6/fc7
                    # maps are 16x16, so this costs ~1 MB each.
                    x = F.dropout(x, 0.5, training=True)
            x = marks.after(layer.name, x, start) if marks else x
        start = time.perf_counter()
        x = self.run_upsample(x)
        if self.padded:
            x = x[:, :, 4:4 + label.shape[1], 4:4 + label.shape[2]]    # Crop, offset 4
        x = marks.after("upsample", x, start) if marks else x
        start = time.perf_counter()
        loss = F.cross_entropy(x, label, ignore_index=255)       # VALID normalization
        return marks.after("loss", loss, start) if marks else loss


def unit_names(layers: list) -> list[str]:
    """The timed units: each conv (with its ReLU/Dropout), each pool, upsample, loss."""
    return [layer.name for layer in layers] + ["upsample", "loss"]


def step_flops(layers: list, data_shape: tuple) -> tuple[int, dict[str, int]]:
    """Forward+backward FLOPs of one step, and each unit's forward FLOPs."""
    n, _, h, w = data_shape
    total, per_layer = 0, {}
    for layer in layers:
        if isinstance(layer, Pool):
            h, w = -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1
            continue
        h = h + 2 * layer.pad - layer.dilation * (layer.kernel - 1)
        w = w + 2 * layer.pad - layer.dilation * (layer.kernel - 1)
        fwd = flops.convolution_flops(layer.c_in, layer.c_out, (layer.kernel,) * 2, (h, w), batch=n)
        per_layer[layer.name] = fwd
        # The first convolution's input is data: it needs no input grad.
        total += flops.train_step_flops(fwd, input_grad=layer is not layers[0])
    fwd = flops.deconvolution_flops(CLASSES, CLASSES, (16, 16), (h, w), CLASSES, batch=n)
    per_layer["upsample"] = fwd
    total += flops.train_step_flops(fwd, weight_grad=False)       # fixed bilinear weights
    return total, per_layer


class _Mark(torch.autograd.Function):
    """Identity whose backward records when the gradient reached this point."""

    @staticmethod
    def forward(ctx, x: Tensor, marks: "Marks", name: str) -> Tensor:
        ctx.marks, ctx.name = marks, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.marks.grad_arrived[ctx.name] = time.perf_counter()
        return grad, None, None


class Marks:
    """Per-unit forward times, and gradient arrival times for per-unit backward times."""

    def __init__(self) -> None:
        self.forward: dict[str, float] = {}
        self.grad_arrived: dict[str, float] = {}

    def after(self, name: str, x: Tensor, start: float) -> Tensor:
        self.forward[name] = time.perf_counter() - start
        return _Mark.apply(x, self, name) if x.requires_grad else x

    def backward_times(self, units: list[str], backward_start: float, backward_end: float) -> dict:
        """A unit's backward runs from its output's gradient arriving to the one before it."""
        times = {}
        for i, name in enumerate(units):
            begin = self.grad_arrived.get(name, backward_start)
            end = self.grad_arrived.get(units[i - 1], backward_end) if i > 0 else backward_end
            times[name] = end - begin
        return times


def make_batch(crop: int, padded: bool, channels_last: bool, batch: int = 1
               ) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(batch, 3, crop, crop, generator=gen) * 50     # mean-subtracted BGR scale
    if channels_last:
        # torch's convolutions and conv_ops answer in their input's memory format,
        # so the whole chain stays channels-last.
        data = data.contiguous(memory_format=torch.channels_last)
    side = crop if padded else crop - 2 * LABEL_MARGIN
    label = torch.randint(0, CLASSES, (batch, side, side), generator=gen)
    label[torch.rand(label.shape, generator=gen) < 0.1] = 255
    return data, label


def train_step(net: Frontend, data: Tensor, label: Tensor, marks: Marks | None = None) -> tuple[float, float]:
    for p in net.parameters():
        p.grad = None
    start = time.perf_counter()
    loss = net(data, label, marks)
    mid = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    if marks is not None:
        marks.backward_window = (mid, end)
    return end - start, loss.item()


def worker(args: argparse.Namespace) -> dict:
    """One implementation's measurements (runs in its own process)."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    fast = args.worker == "fast"
    if fast:
        retain_freed_memory()           # what the fcnwild command does
    net = Frontend(args.crop, args.padded, fast)
    data, label = make_batch(args.crop, args.padded, args.channels_last)
    steps, warmup = (args.steps, 1) if fast else (args.plain_steps, args.plain_warmup)
    result: dict = {"load_before": os.getloadavg()[0]}
    if fast:
        result["gemm_gflops_before"] = flops.gemm_gflops()
    for _ in range(warmup):
        train_step(net, data, label)
    times, losses, cpu, faults = [], [], [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        t, loss = train_step(net, data, label)
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append(t)
        losses.append(loss)
        # CPU seconds well under THREADS x wall time means other processes took the cores.
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    result.update(times=times, loss=losses[0], cpu=cpu, page_faults=faults)
    if fast:
        marks = Marks()
        train_step(net, data, label, marks)
        result["layer_forward"] = marks.forward
        result["layer_backward"] = marks.backward_times(unit_names(net.layers), *marks.backward_window)
        result["paths"] = net.paths
        result["gemm_gflops_after"] = flops.gemm_gflops()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_after"] = os.getloadavg()[0]
    return result


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--crop", str(args.crop),
           "--steps", str(args.steps), "--plain-steps", str(args.plain_steps),
           "--plain-warmup", str(args.plain_warmup)]
    cmd += ["--padded"] * args.padded + ["--channels-last"] * args.channels_last
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(args: argparse.Namespace, fast: dict, plain: dict | None) -> None:
    layers = frontend_layers(args.padded)
    total, per_layer = step_flops(layers, (1, 3, args.crop, args.crop))
    t_fast = min(fast["times"])
    gemm = max(fast["gemm_gflops_before"], fast["gemm_gflops_after"])
    achieved = total / t_fast / 1e9
    print(f"front-end {'padded' if args.padded else 'fyu/dilation'} layout, crop {args.crop}, batch 1, "
          f"{'channels-last' if args.channels_last else 'NCHW'} data, "
          f"{CLASSES} classes, {THREADS} threads, torch {torch.__version__}")
    print(f"FLOPs per forward+backward: {total / 1e9:.1f} GFLOP")
    print(f"fast  (conv_ops):  {t_fast:.2f} s/step (steps: {steps_text(fast)}), "
          f"loss {fast['loss']:.6f}, peak RSS {fast['peak_rss_mb']:.0f} MB, "
          f"load {fast['load_before']:.2f} -> {fast['load_after']:.2f}")
    print(f"achieved {achieved:.1f} GFLOP/s; GEMM 4096^2 {gemm:.1f} GFLOP/s "
          f"(before {fast['gemm_gflops_before']:.1f}, after {fast['gemm_gflops_after']:.1f}); "
          f"ratio {achieved / gemm:.3f}")
    if plain is not None:
        t_plain = min(plain["times"])
        print(f"plain (nn.Conv2d): {t_plain:.2f} s/step (steps: {steps_text(plain)}), "
              f"loss {plain['loss']:.6f}, peak RSS {plain['peak_rss_mb']:.0f} MB, "
              f"load {plain['load_before']:.2f} -> {plain['load_after']:.2f}")
        print(f"speedup fast vs plain: {t_plain / t_fast:.1f}x")
    print(f"\nper layer (fast, one extra step){'':14s} fwd ms   bwd ms   fwd GFLOP  GFLOP/s(fwd+bwd)")
    for name in unit_names(layers):
        fwd_ms, bwd_ms = 1e3 * fast["layer_forward"][name], 1e3 * fast["layer_backward"][name]
        gf = per_layer.get(name)
        path = fast["paths"].get(name, "")
        if gf is None:
            print(f"  {name:10s} {path:26s} {fwd_ms:8.1f} {bwd_ms:8.1f}")
            continue
        step = flops.train_step_flops(gf, input_grad=name != layers[0].name,
                                      weight_grad=name != "upsample")
        rate = step / ((fwd_ms + bwd_ms) / 1e3) / 1e9
        print(f"  {name:10s} {path:26s} {fwd_ms:8.1f} {bwd_ms:8.1f} {gf / 1e9:9.2f} {rate:9.1f}")


def steps_text(result: dict) -> str:
    """Each step's wall seconds, with its CPU seconds and minor page faults."""
    return ", ".join(f"{t:.2f} [cpu {c:.2f}, {f // 1000}k faults]"
                     for t, c, f in zip(result["times"], result["cpu"], result["page_faults"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of the fast version")
    parser.add_argument("--plain-steps", type=int, default=1, help="timed steps of the plain version")
    parser.add_argument("--plain-warmup", type=int, default=0,
                        help="untimed steps of the plain version first (each ~2 minutes at crop 500)")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--padded", action="store_true",
                        help="the padded layout of the dilation_frontend_small reference net")
    parser.add_argument("--channels-last", action="store_true",
                        help="feed the data blob channels-last (both versions keep that format)")
    parser.add_argument("--worker", choices=["fast", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    fast = run_worker("fast", args)
    plain = None if args.skip_plain else run_worker("plain", args)
    report(args, fast, plain)


if __name__ == "__main__":
    main()
