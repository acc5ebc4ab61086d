"""The real-data recipe rehearsed at full size: the README's stage-by-stage "Real data"
commands on the synthetic benchmark written as a GTA5 tree (1914x1052) and a Cityscapes
tree (2048x1024), through the shipped ``prototxt/gta5_to_cityscapes`` nets (copied
byte for byte) and solvers (only ``max_iter``, ``display`` and, on the CPU, ``iter_size``
changed), every stage in its own ``fcnwild`` process:

    surgery   a VGG-16 caffemodel of random He-scaled weights (see --pixel-rms; the real
              one cannot be downloaded here) -> the front-end's initialisation
    stats     GTA5's class sizes for GA+CA's MIL loss
    train     source-only, GA, GA+CA, each from the previous stage's final snapshot
    eval      each stage's snapshot on the generated Cityscapes val images

Prints per stage: target mIoU, seconds per iteration (the first, with its one-time costs,
apart), peak RSS, the per-term losses and the domain classifier's accuracy at every
iteration. On a GPU when torch sees one, else on the CPU for the (small) iteration counts
given, with one crop per update unless --iter-size says otherwise (the output says so).

    python benchmarks/bench_rehearsal.py [--out DIR] [--iterations source_only=2,ga=4,ga_ca=4]
        [--iter-size N] [--source-images 4] [--target-images 4] [--val-images 1]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.data.synthetic import ShiftConfig
from fcnwild.data.synthetic_layouts import CITYSCAPES_SIZE, GTA5_SIZE, write_real_layouts
from fcnwild_process import REPO, Finished, fcnwild, write_he_random

SHIPPED = REPO / "prototxt" / "gta5_to_cityscapes"
VGG16 = REPO / "prototxt" / "vgg16" / "VGG_ILSVRC_16_layers_deploy.prototxt"
DEPLOY = REPO / "prototxt" / "frontend" / "deploy.prototxt"
STAGES = ("source_only", "ga", "ga_ca")
# He scaling keeps every activation at the input's scale: pixels minus the mean, RMS ~60 on
# these images. The published VGG-16 learnt a conv1_1 that brings them to O(1); from plain He
# weights (--pixel-rms 1) the first source-only update at the shipped rate sends the
# segmentation loss to the clip.
PIXEL_RMS = 64.0
ITERATION = re.compile(r"Iteration (\d+) \([^,]+, ([\d.e+-]+)s/1 iters\), loss = (\S+)")
OUTPUT = re.compile(r"Train net output #\d+: (\w+) = (\S+)")


def parse_iterations(text: str, gpu: bool) -> dict[str, int]:
    counts = dict(source_only=50, ga=50, ga_ca=50) if gpu else dict(source_only=2, ga=4, ga_ca=4)
    for item in filter(None, text.split(",")):
        stage, _, n = item.partition("=")
        if stage not in counts or not n.isdigit():
            raise SystemExit(f"--iterations {item!r}: expected STAGE=N, STAGE in {STAGES}")
        counts[stage] = int(n)
    return counts


def stage_solver(run: Path, stage: str, iterations: int, iter_size: int | None) -> Path:
    """The shipped solver of ``stage`` with its iteration count (and crops per update),
    beside a byte-for-byte copy of its net."""
    shutil.copyfile(SHIPPED / f"{stage}_net.prototxt", run / f"{stage}_net.prototxt")
    solver = text_format.Parse((SHIPPED / f"{stage}_solver.prototxt").read_text(),
                               caffe_pb2.SolverParameter())
    solver.max_iter, solver.display = iterations, 1
    if iter_size is not None:
        solver.iter_size = iter_size
    path = run / f"{stage}_solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def parse_log(log: str) -> dict[str, list[float]]:
    """Per iteration: seconds, the solver's smoothed objective, and every train net output
    it displays (display: 1)."""
    curves: dict[str, list[float]] = {"seconds": [], "objective": []}
    for line in log.splitlines():
        if match := ITERATION.search(line):
            curves["seconds"].append(float(match[2]))
            curves["objective"].append(float(match[3]))
        elif (match := OUTPUT.search(line)) and curves["seconds"]:
            curves.setdefault(match[1], []).append(float(match[2]))
    return curves


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--iterations", default="",
                        help="per stage, e.g. source_only=2,ga=4,ga_ca=4 (default: that on the "
                        "CPU, 50 each on a GPU)")
    parser.add_argument("--iter-size", type=int,
                        help="crops per update of every stage (default: 1 on the CPU, the "
                        "shipped 14 and 7 + 7 on a GPU)")
    parser.add_argument("--source-images", type=int, default=4, help="GTA5 frames to write")
    parser.add_argument("--target-images", type=int, default=4, help="Cityscapes train images")
    parser.add_argument("--val-images", type=int, default=1, help="Cityscapes val images scored")
    parser.add_argument("--score", default=",".join(STAGES),
                        help="stages whose snapshot is scored on the val images (default all; "
                        "'none' for none: on a CPU one 2048x1024 image takes minutes)")
    parser.add_argument("--pixel-rms", type=float, default=PIXEL_RMS,
                        help="divide the random VGG-16's conv1_1 weights by this, so that its "
                        "activations are O(1) as the published VGG-16's are (default "
                        f"{PIXEL_RMS:g}, about the RMS of a mean-subtracted pixel; 1: plain He)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    iterations = parse_iterations(args.iterations, gpu)
    if args.iter_size is None and not gpu:
        args.iter_size = 1
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fcnwild_rehearsal_"))
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)

    device = torch.cuda.get_device_name(0) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}")
    print(f"iterations: {iterations}; crops per update: "
          + (f"{args.iter_size} (shipped: source-only 14, GA/GA+CA 7 source + 7 target)"
             if args.iter_size else "the shipped solvers' (14; 7 source + 7 target)"))
    config = ShiftConfig(n_source_train=args.source_images, n_target_train=args.target_images,
                         n_target_val=args.val_images)
    gta5, cityscapes = write_real_layouts(out / "data", config, GTA5_SIZE, CITYSCAPES_SIZE)
    print(f"data: {args.source_images} GTA5 frames {GTA5_SIZE[1]}x{GTA5_SIZE[0]}, "
          f"{args.target_images} Cityscapes train + {args.val_images} val images "
          f"{CITYSCAPES_SIZE[1]}x{CITYSCAPES_SIZE[0]}")
    env = {"GTA5_ROOT": str(gta5), "CITYSCAPES_ROOT": str(cityscapes)}

    vgg = out / "VGG_ILSVRC_16_layers.caffemodel"
    count = write_he_random(VGG16, vgg, input_rms=args.pixel_rms)
    print(f"VGG-16 of random He-scaled weights, conv1_1's divided by {args.pixel_rms:g}: "
          f"{count / 1e6:.1f} M parameters")
    steps: list[Finished] = [
        fcnwild(["surgery", "--weights", str(vgg), "--model", str(DEPLOY),
                 "--output", "frontend_init.caffemodel"], run),
        fcnwild(["stats", "--dataset", f"gta5:{gta5}", "--split", "all",
                 "--out", "class_stats.json", "--no-progress"], run, env)]
    weights = "frontend_init.caffemodel"
    results = {}
    for stage in STAGES:
        solver = stage_solver(run, stage, iterations[stage], args.iter_size)
        gpu_flag = ["-gpu", "0"] if gpu else []
        train = fcnwild(["train", "--solver", solver.name, "--weights", weights, "--quiet",
                         *gpu_flag], run, env)
        weights = f"snapshots/{stage}_iter_{iterations[stage]}.caffemodel"
        steps.append(train)
        curves = parse_log(train.log)
        if len(curves["seconds"]) != iterations[stage]:
            raise SystemExit(f"{stage}: expected {iterations[stage]} iteration lines:\n"
                             f"{train.log[-4000:]}")
        results[stage] = dict(curves=curves, train=train, eval=None, miou=None)
        if stage in args.score.split(","):
            scored = run / f"{stage}_eval.json"
            evaluation = fcnwild(["eval", "--model", str(DEPLOY), "--weights", weights,
                                  "--dataset", f"cityscapes:{cityscapes}", "--split", "val",
                                  "--json", scored.name, "--no-progress",
                                  *(["--device", "cuda"] if gpu else [])], run, env)
            steps.append(evaluation)
            results[stage].update(eval=evaluation,
                                  miou=json.loads(scored.read_text())["mean_iou"])
        report_stage(stage, results[stage], run / f"{stage}_net.prototxt")
    print("\nprocesses:")
    for step in steps:
        print(f"  {step.seconds:7.1f} s  peak RSS {step.peak_rss_mb:7.0f} MB  {step.command}")
    (out / "rehearsal.json").write_text(json.dumps(
        {stage: dict(curves=r["curves"], miou=r["miou"], train_seconds=r["train"].seconds,
                     train_peak_rss_mb=r["train"].peak_rss_mb,
                     eval_seconds=r["eval"] and r["eval"].seconds,
                     eval_peak_rss_mb=r["eval"] and r["eval"].peak_rss_mb)
         for stage, r in results.items()},
        indent=1))
    print(f"results: {out / 'rehearsal.json'}")
    if not args.out:
        shutil.rmtree(out)


def report_stage(stage: str, result: dict, net: Path) -> None:
    curves, train = result["curves"], result["train"]
    seconds = curves["seconds"]
    later = f", then {statistics.median(seconds[1:]):.2f} s (median of {len(seconds) - 1})" \
        if len(seconds) > 1 else ""
    same = digest(net) == digest(SHIPPED / net.name)
    print(f"\n== {stage} (net {'identical to' if same else 'DIFFERS FROM'} the shipped one)")
    if result["eval"] is None:
        print("target mIoU: not scored (--score)")
    else:
        print("target mIoU: " + ", ".join(f"{k}-class {100 * v:.2f}" for k, v in
                                          result["miou"].items() if v is not None)
              + f"; eval {result['eval'].seconds:.1f} s, peak RSS "
              f"{result['eval'].peak_rss_mb:.0f} MB")
    print(f"s/iteration: first {seconds[0]:.2f} s{later}; train process peak RSS "
          f"{train.peak_rss_mb:.0f} MB")
    for name, values in curves.items():
        if name != "seconds":
            print(f"  {name:>14}: " + " ".join(f"{v:.4g}" for v in values))


if __name__ == "__main__":
    main()
