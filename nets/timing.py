"""Per-layer forward/backward timing of a Net (``caffe time``), with FLOP counts.

FLOPs are counted from the blob and weight shapes of Convolution,
Deconvolution and InnerProduct layers (the direct algorithm's 2 x
multiply-adds); a backward pass costs one more forward per gradient it needs
(the input's, the weights'). The achieved GFLOP/s of the whole step is set
against the machine's GEMM speed measured in the same run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from fcnwild.layers import flops
from fcnwild.nets.net import Net


@dataclass
class LayerTiming:
    name: str
    type: str
    forward_ms: float = 0.0
    backward_ms: float = 0.0
    flops: int = 0            # forward + backward FLOPs of one pass


@dataclass
class TimingReport:
    layers: list[LayerTiming] = field(default_factory=list)
    iterations: int = 0
    forward_ms: float = 0.0           # per iteration
    backward_ms: float = 0.0
    total_ms: float = 0.0             # all iterations
    gemm_gflops: float | None = None
    gemm_size: int = 0

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def achieved_gflops(self) -> float:
        step = (self.forward_ms + self.backward_ms) / 1e3
        return self.flops / step / 1e9 if step else 0.0

    def format(self) -> str:
        lines = ["Average time per layer:"]
        width = max((len(layer.name) for layer in self.layers), default=4)
        for layer in self.layers:
            rate = ""
            if layer.flops:
                seconds = (layer.forward_ms + layer.backward_ms) / 1e3
                rate = f"  ({layer.flops / 1e9:8.2f} GFLOP, {layer.flops / seconds / 1e9:7.1f} " \
                       "GFLOP/s)" if seconds else ""
            lines.append(f"{layer.name:>{width}}\tforward: {layer.forward_ms:10.3f} ms.")
            lines.append(f"{layer.name:>{width}}\tbackward: {layer.backward_ms:9.3f} ms.{rate}")
        lines += [f"Average Forward pass: {self.forward_ms:.3f} ms.",
                  f"Average Backward pass: {self.backward_ms:.3f} ms.",
                  f"Average Forward-Backward: {self.forward_ms + self.backward_ms:.3f} ms.",
                  f"Total Time: {self.total_ms:.3f} ms.",
                  f"FLOPs per forward-backward: {self.flops / 1e9:.2f} GFLOP; achieved "
                  f"{self.achieved_gflops:.1f} GFLOP/s"]
        if self.gemm_gflops:
            lines.append(f"GEMM ({self.gemm_size}x{self.gemm_size} float32 matmul, same run): "
                         f"{self.gemm_gflops:.1f} GFLOP/s; the net reaches "
                         f"{self.achieved_gflops / self.gemm_gflops:.2f} of it")
        return "\n".join(lines)


def layer_flops(net: Net, i: int) -> int:
    """Forward + needed-backward FLOPs of layer ``i`` at the blobs' current shapes."""
    layer = net.layers[i]
    if layer.type_name not in ("Convolution", "Deconvolution", "InnerProduct") or \
            not len(layer.blobs):
        return 0
    weight = layer.blobs[0]
    bottom = net.blobs[net.bottom_names[i][0]].shape
    top = net.blobs[net.top_names[i][0]].shape
    if layer.type_name == "Convolution":
        groups = bottom[1] // weight.shape[1]
        forward = flops.convolution_flops(bottom[1], top[1], weight.shape[2:], top[2:], groups,
                                          top[0])
    elif layer.type_name == "Deconvolution":
        groups = top[1] // weight.shape[1]
        forward = flops.deconvolution_flops(bottom[1], top[1], weight.shape[2:], bottom[2:],
                                            groups, bottom[0])
    else:
        # (N, K) weights, or (K, N) with transpose: true; top[-1] is N.
        inputs = weight.shape[-1] if weight.shape[0] == top[-1] else weight.shape[0]
        forward = flops.inner_product_flops(math.prod(bottom) // inputs, inputs,
                                            weight.numel() // inputs)
    if not net.layer_need_backward[i]:
        return forward
    return flops.train_step_flops(
        forward, input_grad=net.bottom_need_backward[i][0],
        weight_grad=net.param_propagate_down[i][0] and weight.requires_grad)


def time_net(net: Net, iterations: int, gemm_size: int = 4096) -> TimingReport:
    """Caffe's ``time``: one warm-up forward-backward, then ``iterations`` timed passes,
    layer by layer, and a ``gemm_size``-square matmul (none when 0) to compare with. Input
    blobs keep what they hold (zeros in a fresh net, as in Caffe, so labels from an Input
    layer are valid)."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    # The matmul first: the net's passes then reuse its freed memory, and the peak
    # memory of the run is the net's own.
    gemm = flops.gemm_gflops(gemm_size, device=device) if gemm_size else None
    net.forward_backward()
    report = TimingReport(layers=[LayerTiming(layer.name, layer.type_name)
                                  for layer in net.layers], iterations=iterations)
    n = len(net.layers)
    start_all = time.perf_counter()
    for _ in range(iterations):
        net.clear_param_diffs()
        for i in range(n):
            sync()
            start = time.perf_counter()
            net.forward_layer(i)
            sync()
            report.layers[i].forward_ms += (time.perf_counter() - start) * 1e3
        for i in reversed(range(n)):
            sync()
            start = time.perf_counter()
            net.backward_layer(i)
            sync()
            report.layers[i].backward_ms += (time.perf_counter() - start) * 1e3
    report.total_ms = (time.perf_counter() - start_all) * 1e3
    for i, timing in enumerate(report.layers):
        timing.forward_ms /= max(iterations, 1)
        timing.backward_ms /= max(iterations, 1)
        timing.flops = layer_flops(net, i)
    report.forward_ms = sum(t.forward_ms for t in report.layers)
    report.backward_ms = sum(t.backward_ms for t in report.layers)
    if gemm is not None:
        report.gemm_gflops, report.gemm_size = gemm, gemm_size
    return report
