"""benchmarks/bench_gpu.py's pieces on the CPU at a tiny size: the shipped nets fed by Input
layers of their data layers' shapes, and the bf16-vs-fp32 loss curve. (The whole script's
CPU dry run, ``python benchmarks/bench_gpu.py --dry-run``, takes tens of seconds: too long
for the suite.)"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_gpu  # noqa: E402


def test_the_shipped_nets_are_fed_by_inputs_of_their_data_layers_shapes() -> None:
    param, shapes = bench_gpu.read_net(bench_gpu.GTA5 / "ga_ca_net.prototxt", shrink=32)
    assert shapes == {"source_data": (1, 3, 500, 500), "source_label": (1, 1, 128, 128),
                      "target_data": (1, 3, 500, 500), "target_label": (1, 1, 128, 128)}
    assert not any(layer.type == "SegmentationData" for layer in param.layer)
    widths = {layer.name: layer.convolution_param.num_output for layer in param.layer
              if layer.type == "Convolution"}
    assert widths["fc6"] == 4096 // 32 and widths["final"] == 19 and widths["dom_score"] == 2
    _, batch8 = bench_gpu.read_net(bench_gpu.FRONTEND / "train_net.prototxt", crop=380, batch=8)
    assert batch8 == {"data": (8, 3, 380, 380), "label": (8, 1, 8, 8)}


def test_the_loss_curve_compares_bf16_with_fp32_at_the_checkpoints(tmp_path) -> None:
    torch.set_num_threads(2)
    param, shapes = bench_gpu.read_net(bench_gpu.FRONTEND / "train_net.prototxt",
                                       shrink=bench_gpu.DRY_RUN_SHRINK, crop=380)
    batch = bench_gpu.learnable_batch(shapes, 1)
    assert batch["data"].shape == shapes["data"] and batch["label"].shape == shapes["label"]
    assert batch["label"].min() >= 0 and batch["label"].max() < 19
    curve = bench_gpu.loss_curve(param, shapes, torch.device("cpu"), tmp_path, iterations=2,
                                 every=1)
    assert [row[0] for row in curve["rows"]] == [1, 2]
    assert all(f32 > 0 and b16 > 0 for _, f32, b16 in curve["rows"])
    assert curve["pass"] == (curve["worst_relative"] <= bench_gpu.CURVE_TOLERANCE)
    assert curve["worst_relative"] < bench_gpu.CURVE_TOLERANCE
