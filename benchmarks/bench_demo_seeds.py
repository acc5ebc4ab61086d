"""The demo's claim over several seeds: target-val mIoU of source-only, GA, GA+CA and the
oracle on the embedded synthetic benchmark (demo issue).

Runs ``fcnwild adapt``'s schedule (tools/experiment/, the demo's settings) once per
seed, each in ``OUT/seed_<k>`` (resumable: finished stages are kept), then prints per
stage the mIoU of every seed and their mean +- std, and whether GA and CA each add on
average and GA+CA reaches source-only + 5 points.

    python benchmarks/bench_demo_seeds.py [--seeds 0 1 2] [--out bench_demo_seeds]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fcnwild.data.labels import CITYSCAPES19
from fcnwild.data.synthetic import BENCHMARK_TRAIN_IDS
from fcnwild.tools.allocator import retain_freed_memory
from fcnwild.tools.demo_cmd import benchmark_miou
from fcnwild.tools.experiment.config import STAGE_TITLES, STAGES, synthetic_experiment
from fcnwild.tools.experiment.run import AdaptationRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench_demo_seeds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    classes = [CITYSCAPES19.class_names[c] for c in BENCHMARK_TRAIN_IDS]
    scores: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for seed in args.seeds:
        start = time.perf_counter()
        results = AdaptationRun(synthetic_experiment(seed), Path(args.out) / f"seed_{seed}").run()
        for stage in STAGES:
            scores[stage].append(100 * benchmark_miou(results[stage], classes))
        print(f"seed {seed}: " + ", ".join(f"{STAGE_TITLES[s]} {scores[s][-1]:.1f}"
                                           for s in STAGES)
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\ntarget-val mIoU over seeds {args.seeds}:")
    for stage in STAGES:
        values = np.array(scores[stage])
        print(f"  {STAGE_TITLES[stage]:24s} {values.mean():5.1f} +- {values.std(ddof=0):4.1f}   "
              + " ".join(f"{v:5.1f}" for v in values))
    mean = {stage: float(np.mean(values)) for stage, values in scores.items()}
    total = mean['ga_ca'] - mean['source_only']
    print(f"GA adds {mean['ga'] - mean['source_only']:+.2f}, CA adds "
          f"{mean['ga_ca'] - mean['ga']:+.2f}; GA+CA - source-only = {total:+.2f} "
          f"(claim: >= +5, {'met' if total >= 5 else 'not met'})")
    (Path(args.out) / "summary.json").write_text(json.dumps(
        {"seeds": args.seeds, "miou": scores, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
