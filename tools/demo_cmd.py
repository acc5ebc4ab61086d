"""``fcnwild demo``: the paper's story on the embedded synthetic benchmark, over seeds.

For each seed, generates (or reuses) that seed's benchmark and runs source-only -> GA ->
GA+CA and a target-trained oracle (tools/experiment/seeds.py runs the seeds' jobs in
parallel, one thread each). Prints per stage the mean target-val IoU over seeds with the
mIoU's confidence interval, the per-class changes each step makes with their spread, and
one sentence per claim saying whether the seeds support it; writes ``results.json``, the
table and figures into ``--out``.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from fcnwild.base.atomic import atomic_write
from fcnwild.base.errors import UsageError
from fcnwild.data.labels import CITYSCAPES19
from fcnwild.data.synthetic import BENCHMARK_TRAIN_IDS, ShiftConfig, shift_parameters
from fcnwild.tools import figures
from fcnwild.tools.experiment import seed_statistics
from fcnwild.tools.experiment.config import STAGE_TITLES, STAGES, synthetic_experiment
from fcnwild.tools.experiment.run import AdaptationRun
from fcnwild.tools.experiment.scoring import TargetScorer
from fcnwild.tools.experiment.seeds import job_conditions, run_seeds, seed_folder
from fcnwild.tools.progress import setup_logging

DEFAULT_SEEDS = (0, 1, 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=_seed_list, nargs="+", metavar="K",
                       help="seeds to run (0,1,2 or 0 1 2), each its own benchmark and initialisation; the "
                       "claims rest on their spread (default 0,1,2)")
    which.add_argument("--seed", type=int, help="one seed only: a quick look, one sample")
    parser.add_argument("--jobs", type=int, help="parallel jobs of one thread each (default: "
                        "one per core); the results do not depend on it")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's iterations (smaller: faster, rougher)")
    parser.add_argument("--images", type=int, help="images per benchmark split (default 500 "
                        "source, 500 target, 200 val)")
    parser.add_argument("--image-size", metavar="HxW", help="benchmark image size (default 48x96)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the target-trained oracle")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 0,1,2")
    return seeds


def run(args: argparse.Namespace) -> int:
    setup_logging()
    started = time.perf_counter()
    out = Path(args.out)
    seeds = [args.seed] if args.seed is not None else \
        [k for group in args.seeds for k in group] if args.seeds else list(DEFAULT_SEEDS)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {seeds}: a seed is given twice")
    stages = tuple(s for s in STAGES if not (args.no_oracle and s == "oracle"))
    height = width = None
    if args.image_size:
        try:
            height, width = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--image-size {args.image_size!r}: expected HxW, e.g. 64x128"
                             ) from None
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: expected at least 1")
    make_experiment = functools.partial(synthetic_experiment, scale=args.scale, height=height,
                                        width=width, images=args.images)
    print(f"fcnwild demo: synthetic domain-shift benchmark, seed{'s' if len(seeds) > 1 else ''} "
          f"{', '.join(map(str, seeds))}; stages "
          f"{' -> '.join(STAGE_TITLES[s] for s in stages)}; outputs in {out}/", flush=True)

    def report(seed: int, done: dict[str, dict]) -> None:
        print(f"seed {seed}: " + ", ".join(f"{STAGE_TITLES[s]} {_miou(r):.1f}"
                                          for s, r in done.items())
              + f"  ({time.perf_counter() - started:.0f} s)", flush=True)

    results = run_seeds(make_experiment, seeds, out, stages, jobs=args.jobs, quiet=args.quiet,
                        on_done=report)
    summary = summarise(results, seeds, stages)
    config = {seed: ShiftConfig(seed=seed, **({"height": height, "width": width} if height else {}),
                                **({"n_source_train": args.images, "n_target_train": args.images,
                                    "n_target_val": args.images} if args.images else {}))
              for seed in seeds}
    summary["benchmark"] = {str(seed): shift_parameters(c) for seed, c in config.items()}
    text = report_text(summary)
    print("\n" + text)
    with atomic_write(out / "results.json", "w") as f:
        f.write(json.dumps(summary, indent=1))
    with atomic_write(out / "table.txt", "w") as f:
        f.write(text + "\n")
    with job_conditions():
        _figures(out, make_experiment(seeds[0]), seed_folder(out, seeds[0]), summary, stages)
    print(f"\nwrote {out}/results.json, table.txt, qualitative.png and training_curves.png "
          f"(seed {seeds[0]}), iou_per_class.png, and per seed (seed_<k>/) each stage's nets, "
          f"snapshots and curves ({time.perf_counter() - started:.0f} s)")
    return 0


def _miou(result: dict) -> float:
    """Mean IoU (%) over the benchmark's classes (absent ones are skipped, as in Cityscapes)."""
    values = [result["iou"][c] for c in _classes() if result["iou"][c] is not None]
    return 100 * float(np.mean(values)) if values else float("nan")


def _classes() -> list[str]:
    return [CITYSCAPES19.class_names[c] for c in BENCHMARK_TRAIN_IDS]


def summarise(results: dict[int, dict[str, dict]], seeds: list[int],
              stages: tuple[str, ...]) -> dict:
    """Everything the demo reports (IoU in %): per stage the per-seed and mean IoU and the
    mIoU's interval; per step of the method its effect's interval and per-class changes;
    the claims."""
    classes = _classes()
    miou = {s: [_miou(results[k][s]) for k in seeds] for s in stages}
    iou = {s: [{c: None if results[k][s]["iou"][c] is None else 100 * results[k][s]["iou"][c]
                for c in classes} for k in seeds] for s in stages}
    intervals = seed_statistics.stage_intervals(miou)
    effects = seed_statistics.effects(miou)
    class_effects = seed_statistics.class_effects(iou, classes)
    return {
        "seeds": seeds, "confidence": seed_statistics.CONFIDENCE, "classes": classes,
        "units": "IoU in percent",
        "stages": {s: {"title": STAGE_TITLES[s],
                       "iterations": results[seeds[0]][s]["iterations"],
                       "miou": intervals[s].to_dict(),
                       "miou_per_seed": dict(zip(map(str, seeds), miou[s])),
                       "iou": {c: _mean([v[c] for v in iou[s]]) for c in classes},
                       "iou_sd": {c: _sd([v[c] for v in iou[s]]) for c in classes},
                       "iou_per_seed": dict(zip(map(str, seeds), iou[s]))}
                   for s in stages},
        "effects": {name: {**interval.to_dict(),
                           "per_seed": dict(zip(map(str, seeds), diffs.tolist())),
                           "per_class": {c: None if e is None else e.to_dict()
                                         for c, e in class_effects[name].items()}}
                    for name, (interval, diffs) in effects.items()},
        "claims": seed_statistics.claims(miou),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _sd(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.std(present, ddof=1)) if len(present) > 1 else None


def report_text(summary: dict) -> str:
    """The table of mean IoU per stage, the per-class changes, and the claims."""
    classes, seeds = summary["classes"], summary["seeds"]
    short = [c[:6] for c in classes]
    several = len(seeds) > 1
    title = (f"target val IoU (%), mean of seeds {','.join(map(str, seeds))}" if several
             else f"target val IoU (%), seed {seeds[0]}")
    width = max(len(title), *(len(s["title"]) for s in summary["stages"].values()))
    interval_head = f"  ±{summary['confidence']:.0%}" if several else ""
    seed_head = "".join(f" {'seed ' + str(k):>7}" for k in seeds) if several else ""
    header = (f"{title:<{width}} " + " ".join(f"{c:>6}" for c in short) + "   mIoU"
              + interval_head + seed_head)
    lines = [header, "-" * len(header)]
    for stage in summary["stages"].values():
        cells = " ".join("   n/a" if stage["iou"][c] is None else f"{stage['iou'][c]:6.1f}"
                         for c in classes)
        miou = stage["miou"]
        spread = f"  {miou['high'] - miou['mean']:4.1f}" if several else ""
        per_seed = "".join(f" {v:7.1f}" for v in stage["miou_per_seed"].values()) if several else ""
        lines.append(f"{stage['title']:<{width}} {cells} {miou['mean']:6.1f}{spread}{per_seed}")
    if several and summary["effects"]:
        lines += ["", f"{'IoU change (points) over seeds':<{width}} "
                  + " ".join(f"{c:>6}" for c in short) + "   mIoU"]
        for name, effect in summary["effects"].items():
            per_class = effect["per_class"]
            means = " ".join("   n/a" if per_class[c] is None else f"{per_class[c]['mean']:+6.1f}"
                             for c in classes)
            sds = " ".join("      " if per_class[c] is None or per_class[c]["sd"] is None
                           else f"{per_class[c]['sd']:6.1f}" for c in classes)
            lines.append(f"{_effect_title(name) + ', mean':<{width}} {means} "
                         f"{effect['mean']:+6.1f}")
            lines.append(f"{'  sd over seeds':<{width}} {sds} {effect['sd']:6.1f}")
    lines += [""] + [f"* {sentence}" for sentence in summary["claims"]]
    return "\n".join(lines)


def _effect_title(name: str) -> str:
    return {"GA": "GA - source only", "CA": "CA (GA+CA - GA)",
            "GA+CA": "GA+CA - source only"}[name]


def _figures(out: Path, experiment, folder: Path, summary: dict, stages: tuple[str, ...]) -> None:
    """Curves and qualitative results of the first seed; per-class bars over all seeds."""
    classes = summary["classes"]
    titles = {s: STAGE_TITLES[s] for s in stages}
    curves = {s: json.loads((folder / s / "curves.json").read_text()) for s in stages}
    figures.training_curves(out / "training_curves.png", curves, titles)
    to_fraction = {titles[s]: [np.nan if summary["stages"][s]["iou"][c] is None
                               else summary["stages"][s]["iou"][c] / 100 for c in classes]
                   for s in stages}
    spread = {titles[s]: [np.nan if summary["stages"][s]["iou_sd"][c] is None
                          else summary["stages"][s]["iou_sd"][c] / 100 for c in classes]
              for s in stages} if len(summary["seeds"]) > 1 else None
    figures.iou_bars(out / "iou_per_class.png", classes, to_fraction, spread)
    run = AdaptationRun(experiment, folder, scorer=TargetScorer(experiment))
    images, before, truth = run.scorer.predict(run.final_weights("source_only"), 6)
    _, after, _ = run.scorer.predict(run.final_weights("ga_ca"), 6)
    figures.qualitative_grid(out / "qualitative.png", images,
                             {"before adaptation": before, "after adaptation (GA+CA)": after},
                             truth, CITYSCAPES19)
