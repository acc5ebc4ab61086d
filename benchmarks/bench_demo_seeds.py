"""The demo's claims over the report seeds: ``fcnwild demo``'s schedule for each seed (the
seeds' jobs in parallel, one thread each, as the demo runs them), then the demo's table and
claims, and the demo issue's bars on them:

* GA+CA - source-only >= +5 points on average, with its 90% interval above +3;
* GA > source-only on every seed;
* CA's average effect and interval, as measured.

Decisions are taken on dev seeds (10 and up); the report seeds are 0, 1, 2, 20, 21 and
seeds 3-9 stay unused. Resumable: each seed's finished stages are kept in ``OUT/seed_<k>``.

    python benchmarks/bench_demo_seeds.py [--seeds 0 1 2 20 21] [--out bench_demo_seeds]
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch

from fcnwild.layers.conv_tuning import machine
from fcnwild.tools.allocator import retain_freed_memory
from fcnwild.tools.demo_cmd import report_text, summarise
from fcnwild.tools.experiment.config import STAGES, synthetic_experiment
from fcnwild.tools.experiment.seeds import run_seeds
from fcnwild.tools.progress import setup_logging

REPORT_SEEDS = (0, 1, 2, 20, 21)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(REPORT_SEEDS))
    parser.add_argument("--out", default="bench_demo_seeds")
    parser.add_argument("--jobs", type=int, help="parallel jobs (default: one per core)")
    parser.add_argument("--scale", type=float, default=1.0, help="the demo's --scale")
    args = parser.parse_args()
    setup_logging()
    retain_freed_memory()
    started = time.perf_counter()
    results = run_seeds(functools.partial(synthetic_experiment, scale=args.scale), args.seeds,
                        args.out, STAGES, jobs=args.jobs, quiet=True)
    summary = summarise(results, args.seeds, STAGES)
    cpu = machine()
    print(f"processor: {cpu['cpu']}, {cpu['isa']}; torch {torch.__version__}; "
          f"{platform.python_version()}; {time.perf_counter() - started:.0f} s\n")
    print(report_text(summary))
    effects = summary["effects"]
    total, ga = effects["GA+CA"], effects["GA"]
    ga_every = all(v > 0 for v in ga["per_seed"].values())
    print(f"\nGA+CA - source-only: mean {total['mean']:+.2f}, 90% interval "
          f"[{total['low']:+.2f}, {total['high']:+.2f}]  (bar: mean >= +5 and low > +3: "
          f"{'met' if total['mean'] >= 5 and total['low'] > 3 else 'NOT met'})")
    print(f"GA > source-only on every seed: {'yes' if ga_every else 'NO'} "
          f"({', '.join(f'{v:+.1f}' for v in ga['per_seed'].values())})")
    ca = effects["CA"]
    print(f"CA (GA+CA - GA): mean {ca['mean']:+.2f}, 90% interval "
          f"[{ca['low']:+.2f}, {ca['high']:+.2f}]")
    summary["processor"] = cpu
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
