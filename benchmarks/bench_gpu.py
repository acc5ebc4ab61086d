"""GPU training speed in each precision, the paper's schedule in GPU-hours, and a bf16
loss-curve check: the GPU side of the speed and precision issues.

For fp32 (TF32 off: Caffe's arithmetic), tf32 and bf16 (nets/precision.py) it times,
through fcnwild's Net and solvers, at the batch and crop the shipped prototxts configure
(``--batch`` sets another batch per data layer):

* the front-end's forward-backward pass (prototxt/frontend/train_net.prototxt) and the
  GA+CA net's (prototxt/gta5_to_cityscapes/ga_ca_net.prototxt), in images/s and as a
  fraction of a large matrix product of the same precision measured in the same run;
* one iteration of each stage of the GTA5 -> Cityscapes schedule (source-only, GA,
  GA+CA: the alternating solver's classifier and representation half-steps), and from
  the solvers' max_iter and iter_size the GPU-hours the full schedule takes here.

The data layers become Input layers of the same shapes, fed once with random images and
labels (the step's arithmetic does not depend on the values; the GA+CA net's class
statistics are generated). ``--loss-curve N`` trains the front-end N iterations on
generated data that a net can learn (class-coloured blocks) in fp32 and in bf16 from the
same weights and prints both losses every 20th iteration: bf16 must stay within 2%
(relative) of fp32 at each.

``--dry-run`` runs the whole path on the CPU at a tiny size (channels divided by 32,
the smallest crop the unpadded front-end takes, one call per measurement, a 10-iteration
curve compared every 5th) to check the script itself; its figures mean nothing. Results
also go to ``--out`` as JSON.

    python benchmarks/bench_gpu.py [--steps 10] [--loss-curve 200] [--out DIR] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.data.class_stats import ClassStats, save_class_stats
from fcnwild.layers import flops
from fcnwild.nets import precision as precisions
from fcnwild.nets.net import Net
from fcnwild.nets.timing import layer_flops
from fcnwild.solvers import create_solver

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "prototxt" / "frontend"
GTA5 = ROOT / "prototxt" / "gta5_to_cityscapes"
STAGES = ("source_only", "ga", "ga_ca")
CURVE_EVERY = 20
CURVE_TOLERANCE = 0.02
DRY_RUN_SHRINK = 32
DRY_RUN_CURVE = 10          # iterations, compared every 5th
DATASHEET_TFLOPS = {   # dense, no sparsity: (fp32, bf16)
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),          # SXM / HBM3
    "H200": (67.0, 989.0),
}


# --------------------------------------------------------------------------- nets
def read_net(path: Path, shrink: int = 1, crop: int | None = None,
             batch: int | None = None) -> tuple[caffe_pb2.NetParameter, dict]:
    """A shipped net with its SegmentationData layers turned into Input layers of the same
    shapes (``crop`` and ``batch`` override the data layers'; ``shrink`` divides every
    convolution of 64 or more outputs by it); returns the net and the input shapes."""
    param = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in param.layer:
        if layer.type == "SegmentationData":
            p = layer.segmentation_data_param
            side, n = crop or p.crop_size, batch or p.batch_size
            label = (side - 2 * p.margin) // p.label_stride
            shapes[layer.top[0]] = (n, 3, side, side)
            if len(layer.top) > 1:
                shapes[layer.top[1]] = (n, 1, label, label)
            layer.type = "Input"
            layer.ClearField("segmentation_data_param")
            for top in layer.top:
                layer.input_param.shape.add(dim=list(shapes[top]))
        elif layer.type == "Convolution" and shrink > 1:
            c = layer.convolution_param
            if c.num_output >= 64:
                c.num_output = max(2, c.num_output // shrink)
    return param, shapes


def feed(net: Net, shapes: dict, seed: int) -> None:
    """Random mean-subtracted images; random train ids (10% ignored) on labelled sources,
    all-ignore on the target."""
    gen = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        if shape[1] == 3:
            value = torch.randn(shape, generator=gen) * 50
        elif name.startswith("target"):
            value = torch.full(shape, 255.0)
        else:
            value = torch.randint(0, 19, shape, generator=gen).float()
            value[torch.rand(shape, generator=gen) < 0.1] = 255
        net.set_input(name, value)


def write_class_stats(folder: Path) -> None:
    """Plausible per-class size bounds for the MIL loss (the step's cost does not depend
    on them)."""
    names = tuple(f"class{c}" for c in range(19))
    save_class_stats(ClassStats(names, "cityscapes19", np.full(19, 0.01), np.full(19, 0.1),
                                np.full(19, 0.3), np.full(19, 100), 100), folder / "class_stats.json")


def solver_param(stage: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse((GTA5 / f"{stage}_solver.prototxt").read_text(),
                             caffe_pb2.SolverParameter())


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call, after ``warmup`` calls (cuDNN's algorithm search, allocator)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def gemm_tflops(precision: str, device: torch.device, size: int) -> float:
    """A size^3 matrix product in ``precision``'s arithmetic (TF32 flags as configured)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return flops.gemm_gflops(size, 10, dtype=dtype, device=device) / 1e3


def net_flops(net: Net) -> int:
    return sum(layer_flops(net, i) for i in range(len(net.layers)))


def build(param: caffe_pb2.NetParameter, shapes: dict, device: torch.device, folder: Path,
          precision: str) -> Net:
    torch.manual_seed(0)
    path = folder / f"{param.name}.prototxt"
    path.write_text(text_format.MessageToString(param))        # class_stats.json resolves here
    net = Net(path, phase="train").to(device)
    net.precision = precision
    feed(net, shapes, seed=1)
    return net


def stage_iteration(stage: str, net: Net, device: torch.device, precision: str,
                    steps: int, warmup: int) -> dict[str, float]:
    """Seconds of one solver pass (iter_size 1) of a stage, split into the alternating
    solver's half-steps where it has them."""
    param = solver_param(stage)
    param.iter_size = 1
    param.ClearField("test_net")
    param.ClearField("test_iter")
    param.test_interval = 0
    param.snapshot = 0
    solver = create_solver(param, train_net=net, device=device, precision=precision)
    if stage == "source_only":
        return {"pass": timed(solver.train_iteration, steps, device, warmup)}
    return {"classifier": timed(solver.classifier_step, steps, device, warmup),
            "representation": timed(solver.representation_step, steps, device, warmup)}


# --------------------------------------------------------------------------- loss curve
def learnable_batch(shapes: dict, iteration: int) -> dict[str, torch.Tensor]:
    """Blocks of random classes, each block's pixels the class's colour plus noise: a
    task whose loss a net drives down, so that two precisions' curves can diverge."""
    gen = torch.Generator().manual_seed(1000 + iteration)
    colours = torch.Generator().manual_seed(7)
    palette = torch.rand(19, 3, generator=colours) * 200 - 100
    batch, _, side, _ = shapes["data"]
    label_side = shapes["label"][2]
    cells = 4
    classes = torch.randint(0, 19, (batch, cells, cells), generator=gen)
    image_blocks = classes.repeat_interleave(-(-side // cells), 1).repeat_interleave(
        -(-side // cells), 2)[:, :side, :side]
    data = palette[image_blocks].permute(0, 3, 1, 2) + 20 * torch.randn(batch, 3, side, side,
                                                                        generator=gen)
    margin = (side - label_side) // 2
    label = image_blocks[:, margin:margin + label_side, margin:margin + label_side]
    return {"data": data, "label": label[:, None].float()}


def loss_curve(param: caffe_pb2.NetParameter, shapes: dict, device: torch.device,
               folder: Path, iterations: int, every: int) -> dict:
    curves = {}
    for precision in ("fp32", "bf16"):
        precisions.configure(precision, device)
        net = build(param, shapes, device, folder, precision)
        solver_p = text_format.Parse((FRONTEND / "solver.prototxt").read_text(),
                                     caffe_pb2.SolverParameter())
        solver_p.iter_size = 1
        solver_p.ClearField("test_net")
        solver_p.ClearField("test_iter")
        solver_p.test_interval = 0
        solver_p.snapshot = 0
        solver_p.display = 0
        solver = create_solver(solver_p, train_net=net, device=device, precision=precision)
        losses = []
        for it in range(1, iterations + 1):
            for name, value in learnable_batch(shapes, it).items():
                net.set_input(name, value)
            losses.append(solver.train_iteration())
            solver.iter += 1
        curves[precision] = losses
    points = list(range(every, iterations + 1, every))
    rows = [(it, curves["fp32"][it - 1], curves["bf16"][it - 1]) for it in points]
    worst = max((abs(b - f) / abs(f) for _, f, b in rows), default=0.0)
    return {"iterations": iterations, "rows": rows, "worst_relative": worst,
            "pass": worst <= CURVE_TOLERANCE}


# --------------------------------------------------------------------------- main
def datasheet_peak(name: str) -> tuple[float, float] | None:
    for key, peak in DATASHEET_TFLOPS.items():
        if key in name:
            return peak
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed calls of each measurement")
    parser.add_argument("--batch", type=int,
                        help="images per data layer (default: as the prototxts configure)")
    parser.add_argument("--precisions", nargs="+", choices=precisions.PRECISIONS,
                        default=list(precisions.PRECISIONS))
    parser.add_argument("--loss-curve", type=int, default=200, metavar="N",
                        help="bf16-vs-fp32 loss curve over N front-end iterations (0: skip)")
    parser.add_argument("--out", type=Path, help="folder for results.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="the whole script on the CPU at a tiny size (checks the script)")
    args = parser.parse_args()
    every, warmup = CURVE_EVERY, 2
    if args.dry_run:
        device, shrink, crop, gemm_size = torch.device("cpu"), DRY_RUN_SHRINK, 380, 256
        args.steps, warmup = 1, 0
        args.loss_curve, every = min(args.loss_curve, DRY_RUN_CURVE), DRY_RUN_CURVE // 2
    elif torch.cuda.is_available():
        device, shrink, crop, gemm_size = torch.device("cuda"), 1, None, 8192
    else:
        raise SystemExit("bench_gpu: no CUDA device (--dry-run checks the script on the CPU)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}{', DRY RUN: figures mean nothing' if args.dry_run else ''}")
    results: dict = {"device": name, "dry_run": args.dry_run, "precisions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_class_stats(folder)
        nets = {"front-end": read_net(FRONTEND / "train_net.prototxt", shrink, crop, args.batch),
                **{stage: read_net(GTA5 / f"{stage}_net.prototxt", shrink, crop, args.batch)
                   for stage in STAGES}}
        for precision in args.precisions:
            line = precisions.configure(precision, device)
            gemm = gemm_tflops(precision, device, gemm_size)
            entry: dict = {"configured": line, "gemm_tflops": gemm, "nets": {}, "stages": {}}
            print(f"\n== {line}\n   GEMM {gemm_size}^3: {gemm:.1f} TFLOP/s")
            for label in ("front-end", "ga_ca"):
                param, shapes = nets[label]
                net = build(param, shapes, device, folder, precision)
                seconds = timed(net.forward_backward, args.steps, device, warmup)
                achieved = net_flops(net) / seconds / 1e12
                images = sum(s[0] for n, s in shapes.items() if s[1] == 3) / seconds
                entry["nets"][label] = {"seconds": seconds, "tflops": achieved,
                                        "images_per_s": images}
                sheet = datasheet_peak(name)
                extra = ""
                if sheet is not None:
                    peak = sheet[1] if precision == "bf16" else sheet[0]
                    extra = f", {achieved / peak:.2f} of the datasheet's {peak:.0f}"
                print(f"   {label:10s} forward-backward: {seconds * 1e3:8.1f} ms, {images:7.1f} "
                      f"images/s, {achieved:7.2f} TFLOP/s = {achieved / gemm:.2f} of the GEMM"
                      f"{extra}")
                del net
            total_hours = 0.0
            for stage in STAGES:
                param, shapes = nets[stage]
                net = build(param, shapes, device, folder, precision)
                parts = stage_iteration(stage, net, device, precision, args.steps, warmup)
                solver = solver_param(stage)
                passes = solver.max_iter * solver.iter_size
                hours = passes * sum(parts.values()) / 3600
                total_hours += hours
                entry["stages"][stage] = {**parts, "max_iter": solver.max_iter,
                                          "iter_size": solver.iter_size, "gpu_hours": hours}
                split = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items())
                print(f"   {stage:11s}: {split} per pass; {solver.max_iter} iterations x "
                      f"{solver.iter_size} passes = {hours:.1f} GPU-hours")
                del net
            entry["schedule_gpu_hours"] = total_hours
            print(f"   the paper's GTA5 -> Cityscapes schedule: {total_hours:.1f} GPU-hours "
                  f"on this device (updates counted once per pass: an upper bound)")
            results["precisions"][precision] = entry
        if args.loss_curve:
            param, shapes = nets["front-end"]
            curve = loss_curve(param, shapes, device, folder, args.loss_curve, every)
            results["loss_curve"] = curve
            print(f"\n== bf16 vs fp32 loss, front-end on generated data, {args.loss_curve} "
                  f"iterations, every {every}th compared")
            for it, f32, b16 in curve["rows"]:
                print(f"   iteration {it:4d}: fp32 {f32:.5f}  bf16 {b16:.5f}  "
                      f"({100 * (b16 - f32) / f32:+.2f}%)")
            print(f"   worst relative difference {100 * curve['worst_relative']:.2f}% "
                  f"({'PASS' if curve['pass'] else 'FAIL'}: the bound is "
                  f"{100 * CURVE_TOLERANCE:.0f}%)")
        if device.type == "cuda":
            results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak GPU memory {results['peak_gpu_memory_gib']:.1f} GiB")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
