"""The train steps users run, timed as ``fcnwild time`` times them: the front-end
(prototxt/frontend/train_net.prototxt) and the paper's GA+CA net with its alternating
solver (prototxt/gta5_to_cityscapes/ga_ca_net.prototxt, ga_ca_solver.prototxt), at the
configured batch (front-end 1; GA+CA 1 source + 1 target image) and crop 500, fp32.

The nets read their data through SegmentationData from generated dataset trees in the
real Cityscapes and GTA5 layouts (a temporary folder; tests/data_layouts.py writes
them); the GA+CA net's class_stats.json is computed from the generated GTA5 tree, as
``fcnwild stats`` would. Every measurement runs in its own process, so that its peak
RSS is its own:

1. a calibration run (one forward-backward; conv_ops measures the kernels of shapes it
   has not met on this machine, layers/conv_tuning.py; ``--recalibrate`` measures all
   again), so that no timed process carries the measurement's allocations;
2. the front-end and the GA+CA net through nets/timing.py's ``time_net`` (what
   ``fcnwild time`` runs): per layer forward/backward ms, GFLOP/s and the fraction of the
   4096^2 GEMM measured in the same process, the step's GFLOP/s against that GEMM, the
   path of each convolution operation, peak RSS;
3. the GA+CA solver's two half-steps (AlternatingSolver.classifier_step and
   representation_step, ``iter_size`` passes each, update included), and the GA+CA
   forward-backward split into segmentation, domain classifier and the MIL solve.

The load average is printed before and after each process; on a shared machine the
absolute figures move with it, the ratios to the same-process GEMM much less.

    python benchmarks/bench_train_step.py [--nets frontend gaca] [--iterations 3]
        [--solver-iterations 2] [--iter-size N] [--crop 500] [--recalibrate]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
FRONTEND_NET = ROOT / "prototxt" / "frontend" / "train_net.prototxt"
GACA_DIR = ROOT / "prototxt" / "gta5_to_cityscapes"
IMAGE_SIZE = (384, 768)       # generated images; the layer pads by the margin and crops


# --------------------------------------------------------------------------- data
def make_data(folder: Path) -> dict[str, str]:
    """Dataset trees in the real layouts, and the environment naming them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from data_layouts import make_cityscapes, make_gta5
    make_cityscapes(folder / "cityscapes", "train", {"aachen": 2, "bremen": 2}, size=IMAGE_SIZE)
    make_gta5(folder / "gta5", frames=4, size=IMAGE_SIZE)
    return {"CITYSCAPES_ROOT": str(folder / "cityscapes"), "GTA5_ROOT": str(folder / "gta5")}


def write_nets(folder: Path, crop: int, iter_size: int | None) -> dict[str, Path]:
    """The shipped prototxts, with the crop (and iter_size) asked for, beside the class
    statistics the GA+CA net reads."""
    from google.protobuf import text_format

    from fcnwild.base import caffe_pb2
    from fcnwild.data.class_stats import compute_class_stats, save_class_stats
    from fcnwild.data.datasets import open_dataset

    def with_crop(path: Path, out: Path) -> Path:
        param = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
        for layer in param.layer:
            if layer.type == "SegmentationData":
                layer.segmentation_data_param.crop_size = crop
        out.write_text(text_format.MessageToString(param))
        return out

    frontend = with_crop(FRONTEND_NET, folder / "frontend_train_net.prototxt")
    gaca = with_crop(GACA_DIR / "ga_ca_net.prototxt", folder / "ga_ca_net.prototxt")
    solver = text_format.Parse((GACA_DIR / "ga_ca_solver.prototxt").read_text(),
                               caffe_pb2.SolverParameter())
    solver.net = gaca.name
    solver.snapshot = 0
    solver.snapshot_prefix = str(folder / "snapshots" / "ga_ca")
    if iter_size:
        solver.iter_size = iter_size
    (folder / "ga_ca_solver.prototxt").write_text(text_format.MessageToString(solver))
    stats = compute_class_stats(open_dataset(f"gta5:{folder / 'gta5'}", "all"), progress=False)
    save_class_stats(stats, folder / "class_stats.json")
    return {"frontend": frontend, "gaca": gaca, "solver": folder / "ga_ca_solver.prototxt"}


# --------------------------------------------------------------------------- children
def child_time(model: str, iterations: int, calibrate_only: bool) -> dict:
    """time_net on ``model`` (what ``fcnwild time`` runs), with each convolution's plan."""
    import torch

    from fcnwild.layers import conv_ops
    from fcnwild.nets.net import Net
    from fcnwild.nets.timing import time_net
    net = Net(model, phase="train")
    if calibrate_only:
        net.forward_backward()
        return {}
    report = time_net(net, iterations)
    layers = []
    for i, (layer, timing) in enumerate(zip(net.layers, report.layers)):
        plan = None
        if layer.type_name in ("Convolution", "Deconvolution"):
            p = layer.param.convolution_param
            g = layer.geometry
            bottom = net.blobs[net.bottom_names[i][0]].tensor
            plan = list(conv_ops.choose_plan(bottom, layer.blobs[0], g.stride, g.pad, g.dilation,
                                             p.group, layer.type_name == "Deconvolution"))
        layers.append({"name": timing.name, "type": timing.type, "forward_ms": timing.forward_ms,
                       "backward_ms": timing.backward_ms, "flops": timing.flops, "plan": plan})
    return {"layers": layers, "forward_ms": report.forward_ms, "backward_ms": report.backward_ms,
            "flops": report.flops, "gemm_gflops": report.gemm_gflops,
            "threads": torch.get_num_threads()}


def child_solver(solver_path: str, iterations: int) -> dict:
    """The alternating solver's half-steps, each ``iter_size`` passes plus its update."""
    from fcnwild.layers.flops import gemm_gflops
    from fcnwild.solvers.adversarial import AlternatingSolver
    solver = AlternatingSolver(solver_path)
    solver.train_iteration()                          # warm-up
    classifier, representation = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        solver.classifier_step()
        middle = time.perf_counter()
        solver.representation_step()
        classifier.append(middle - start)
        representation.append(time.perf_counter() - middle)
    return {"classifier_s": classifier, "representation_s": representation,
            "iter_size": solver.param.iter_size, "gemm_gflops": gemm_gflops()}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    """One measurement in a fresh process; adds its peak RSS and the load around it."""
    load_before = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, *args], env={**os.environ, **env},
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def child_main(args: argparse.Namespace) -> None:
    import torch

    from fcnwild.tools.allocator import retain_freed_memory
    torch.set_num_threads(THREADS)
    retain_freed_memory()                                 # what the fcnwild command does
    if args.child == "time":
        result = child_time(args.model, args.iterations, args.calibrate_only)
    else:
        result = child_solver(args.model, args.iterations)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# --------------------------------------------------------------------------- report
DOMAIN_PREFIXES = ("dom_", "domain_")


def print_time_report(title: str, result: dict) -> None:
    gemm = result["gemm_gflops"]
    step_ms = result["forward_ms"] + result["backward_ms"]
    achieved = result["flops"] / step_ms / 1e6
    print(f"\n== {title}")
    print(f"{'layer':34s} {'fwd ms':>9s} {'bwd ms':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} "
          f"{'x GEMM':>7s}  paths (forward/input grad/weight grad)")
    for layer in result["layers"]:
        total = layer["forward_ms"] + layer["backward_ms"]
        if total < 0.5 and not layer["flops"]:
            continue
        rate = layer["flops"] / total / 1e6 if layer["flops"] and total else None
        cells = (f"{layer['flops'] / 1e9:8.2f} {rate:8.1f} {rate / gemm:7.2f}" if rate
                 else f"{'':8s} {'':8s} {'':7s}")
        plan = "/".join(layer["plan"]) if layer["plan"] else ""
        print(f"{layer['name']:34s} {layer['forward_ms']:9.1f} {layer['backward_ms']:9.1f} "
              f"{cells}  {plan}")
    print(f"step (forward + backward): {step_ms / 1e3:.3f} s; {result['flops'] / 1e9:.1f} GFLOP; "
          f"{achieved:.1f} GFLOP/s = {achieved / gemm:.3f} of the GEMM measured in the same "
          f"process ({gemm:.1f} GFLOP/s, 4096^2 float32, {result['threads']} threads)")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB; load average {result['load'][0]:.2f} -> "
          f"{result['load'][1]:.2f}")


def print_gaca_split(result: dict) -> None:
    step = result["forward_ms"] + result["backward_ms"]
    parts = {"segmentation": 0.0, "domain classifier": 0.0, "MIL solve": 0.0}
    for layer in result["layers"]:
        ms = layer["forward_ms"] + layer["backward_ms"]
        if layer["type"] == "ConstrainedMILLoss":
            parts["MIL solve"] += ms
        elif layer["name"].startswith(DOMAIN_PREFIXES):
            parts["domain classifier"] += ms
        else:
            parts["segmentation"] += ms
    print("GA+CA forward-backward split: " + "; ".join(
        f"{name} {ms:.0f} ms ({100 * ms / step:.1f}%)" for name, ms in parts.items()))
    share = parts["MIL solve"] / step
    print(f"MIL solve: {100 * share:.2f}% of the step ({'within' if share <= 0.05 else 'OVER'} "
          "the 5% budget)")


def print_solver_report(result: dict) -> None:
    n = result["iter_size"]
    for name, key in (("classifier step", "classifier_s"), ("representation step", "representation_s")):
        times = result[key]
        best = min(times)
        print(f"{name:20s}: {best:7.2f} s per iteration ({n} passes + update; "
              f"{best / n:.2f} s per pass; runs: {', '.join(f'{t:.2f}' for t in times)})")
    total = min(result["classifier_s"]) + min(result["representation_s"])
    print(f"alternating iteration: {total:.2f} s; peak RSS {result['peak_rss_mb']:.0f} MB; "
          f"GEMM {result['gemm_gflops']:.1f} GFLOP/s; load {result['load'][0]:.2f} -> "
          f"{result['load'][1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=["frontend", "gaca"],
                        default=["frontend", "gaca"])
    parser.add_argument("--iterations", type=int, default=3, help="timed passes (time_net)")
    parser.add_argument("--solver-iterations", type=int, default=2,
                        help="timed alternating iterations of the GA+CA solver (0: none)")
    parser.add_argument("--iter-size", type=int,
                        help="override the GA+CA solver's iter_size (default: as configured)")
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure every convolution kernel choice again first")
    parser.add_argument("--child", choices=["time", "solver"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--calibrate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    import torch
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{THREADS} threads, crop {args.crop}, float32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = make_data(folder)
        paths = write_nets(folder, args.crop, args.iter_size)
        for name in args.nets:
            tuning = {"FCNWILD_CONV_TUNING": "recalibrate" if args.recalibrate else "auto"}
            start = time.perf_counter()
            run_child(["--child", "time", "--model", str(paths[name]), "--calibrate-only"],
                      {**env, **tuning})
            print(f"[{name}: calibration pass {time.perf_counter() - start:.0f} s]")
        print("\nequivalent command: fcnwild time --model <net> --iterations "
              f"{args.iterations} --threads {THREADS}")
        if "frontend" in args.nets:
            result = run_child(["--child", "time", "--model", str(paths["frontend"]),
                                "--iterations", str(args.iterations)], env)
            print_time_report(f"front-end train step, crop {args.crop}, batch 1", result)
        if "gaca" in args.nets:
            result = run_child(["--child", "time", "--model", str(paths["gaca"]),
                                "--iterations", str(args.iterations)], env)
            print_time_report(f"GA+CA train pass, crop {args.crop}, 1 source + 1 target image",
                              result)
            print_gaca_split(result)
            if args.solver_iterations:
                solver = run_child(["--child", "solver", "--model", str(paths["solver"]),
                                    "--iterations", str(args.solver_iterations)], env)
                print("\n== GA+CA alternating solver (ga_ca_solver.prototxt)")
                print_solver_report(solver)


if __name__ == "__main__":
    main()
