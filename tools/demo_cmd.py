"""``fcnwild demo``: the paper's story on the embedded synthetic benchmark.

Generates (or reuses) the benchmark, runs source-only -> GA -> GA+CA and a
target-trained oracle, prints the paper-style table on the target val split and
writes ``results.json`` and figures into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fcnwild.base.errors import UsageError
from fcnwild.data.labels import CITYSCAPES19
from fcnwild.data.synthetic import BENCHMARK_TRAIN_IDS, ShiftConfig, shift_parameters
from fcnwild.tools import figures
from fcnwild.tools.experiment.config import STAGE_TITLES, STAGES, synthetic_experiment
from fcnwild.tools.experiment.run import AdaptationRun
from fcnwild.tools.progress import setup_logging, stage_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's iterations (smaller: faster, rougher)")
    parser.add_argument("--images", type=int, help="images per benchmark split (default 500 "
                        "source, 500 target, 200 val)")
    parser.add_argument("--image-size", metavar="HxW", help="benchmark image size (default 64x128)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the target-trained oracle")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    started = time.perf_counter()
    out = Path(args.out)
    stages = tuple(s for s in STAGES if not (args.no_oracle and s == "oracle"))
    height = width = None
    if args.image_size:
        try:
            height, width = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--image-size {args.image_size!r}: expected HxW, e.g. 64x128"
                             ) from None
    experiment = synthetic_experiment(args.seed, args.scale, height=height, width=width,
                                      images=args.images)
    print(f"fcnwild demo: synthetic domain-shift benchmark (seed {args.seed}), stages "
          f"{' -> '.join(STAGE_TITLES[s] for s in stages)}; outputs in {out}/")
    with stage_progress(disable=args.quiet) as progress:
        run_ = AdaptationRun(experiment, out, progress)
        results = run_.run(stages)

    classes = [CITYSCAPES19.class_names[c] for c in BENCHMARK_TRAIN_IDS]
    table = benchmark_table(results, classes)
    print(table)
    config = ShiftConfig(seed=args.seed, **({"height": height, "width": width} if height else {}),
                         **({"n_source_train": args.images, "n_target_train": args.images,
                             "n_target_val": args.images} if args.images else {}))
    summary = {"seed": args.seed, "benchmark": shift_parameters(config),
               "classes": classes, "stages": {
                   stage: {"title": r["title"], "iterations": r["iterations"],
                           "miou": benchmark_miou(r, classes),
                           "iou": {c: r["iou"][c] for c in classes},
                           "miou_19": r["mean_iou"].get("19")}
                   for stage, r in results.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "table.txt").write_text(table + "\n")

    titles = {s: STAGE_TITLES[s] for s in stages}
    curves = {s: json.loads((out / s / "curves.json").read_text()) for s in stages}
    figures.training_curves(out / "training_curves.png", curves, titles)
    figures.iou_bars(out / "iou_per_class.png", classes,
                     {titles[s]: [np.nan if results[s]["iou"][c] is None else results[s]["iou"][c]
                                  for c in classes] for s in stages})
    images, before, truth = run_.scorer.predict(run_.final_weights("source_only"), 6)
    _, after, _ = run_.scorer.predict(run_.final_weights("ga_ca"), 6)
    figures.qualitative_grid(out / "qualitative.png", images,
                             {"before adaptation": before, "after adaptation (GA+CA)": after},
                             truth, CITYSCAPES19)
    print(f"\nwrote {out}/results.json, table.txt, qualitative.png, training_curves.png, "
          f"iou_per_class.png and per-stage nets, snapshots and curves "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def benchmark_miou(result: dict, classes: list[str]) -> float:
    """Mean IoU over the benchmark's classes (absent ones are skipped, as in Cityscapes)."""
    values = [result["iou"][c] for c in classes if result["iou"][c] is not None]
    return float(np.mean(values)) if values else float("nan")


def benchmark_table(results: dict[str, dict], classes: list[str]) -> str:
    """Per-class IoU and mIoU (%) per stage, columns as in the paper's tables."""
    short = [c[:6] for c in classes]
    width = max(len(STAGE_TITLES[s]) for s in results)
    header = f"{'target val IoU (%)':<{width}} " + " ".join(f"{c:>6}" for c in short) + "   mIoU"
    lines = [header, "-" * len(header)]
    for stage, result in results.items():
        cells = " ".join("   n/a" if result["iou"][c] is None else f"{100 * result['iou'][c]:6.1f}"
                         for c in classes)
        lines.append(f"{STAGE_TITLES[stage]:<{width}} {cells} {100 * benchmark_miou(result, classes):6.1f}")
    return "\n".join(lines)
