"""``fcnwild adapt``: source-only -> GA -> GA+CA, each stage from the previous one, scored on
the labelled target split. The embedded synthetic benchmark by default; real datasets by
``--source gta5:ROOT --target cityscapes:ROOT`` (and the splits they use)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fcnwild.base.errors import DatasetError, UsageError
from fcnwild.data.datasets import open_dataset, parse_spec
from fcnwild.nets.frontend import ARCHITECTURES, DataSpec
from fcnwild.nets.precision import PRECISIONS
from fcnwild.nets.tile_size import DEFAULT_MEMORY_BUDGET
from fcnwild.tools.experiment.config import (
    STAGE_TITLES,
    STAGES,
    Experiment,
    stage_order,
    synthetic_experiment,
)
from fcnwild.tools.experiment.run import AdaptationRun
from fcnwild.tools.experiment.scoring import TargetScorer
from fcnwild.tools.experiment.settings import ADAPTATION, SOURCE_ONLY, SolverSettings
from fcnwild.tools.progress import setup_logging, stage_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="adapt_out", help="output folder (default adapt_out)")
    parser.add_argument("--stages", default="source_only,ga,ga_ca",
                        help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0, help="benchmark and solver seed")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="synthetic benchmark: multiply every stage's iterations")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what the train nets compute in, as fcnwild train --precision "
                        "(default fp32, Caffe's arithmetic)")
    real = parser.add_argument_group("real datasets (instead of the synthetic benchmark)")
    real.add_argument("--source", help="labelled source dataset spec, e.g. gta5:/data/GTA5")
    real.add_argument("--target", help="target dataset spec, e.g. cityscapes:/data/cityscapes")
    real.add_argument("--source-split",
                      help="labelled source training split (default: every frame of a set "
                      "without official splits, e.g. gta5 or synthia; else train)")
    real.add_argument("--target-split", help="unlabelled target training images (default as "
                      "--source-split)")
    real.add_argument("--eval-split", default="val", help="labelled target split to score on")
    real.add_argument("--oracle-split", help="labelled target training split for the oracle")
    real.add_argument("--arch", default="frontend", choices=sorted(ARCHITECTURES),
                      help="network: the paper's dilated VGG-16 front-end (default) or a "
                      "smaller one")
    real.add_argument("--classes", type=int, default=19,
                      help="classes the net predicts; must match the target's label space "
                      "(default 19)")
    real.add_argument("--crop", type=int, default=500,
                      help="training crop in pixels, source and target (default 500)")
    real.add_argument("--iter-size", type=int,
                      help="images per update of every stage, as the solvers' iter_size "
                      "(default: source-only 14, GA and GA+CA 7 source + 7 target)")
    real.add_argument("--eval-tile", type=int, metavar="PIXELS",
                      help="square net input for scoring the stages (default: the largest "
                      "that fits --memory-budget; the whole image when it fits)")
    real.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                      metavar="GIB", help="memory a scoring forward pass may take "
                      f"(default {DEFAULT_MEMORY_BUDGET / 2**30:g})")
    real.add_argument("--weights", help="initial weights of the source-only stage "
                      "(e.g. VGG-16 after `fcnwild surgery`)")
    real.add_argument("--iterations", default="",
                      help="per-stage iterations, e.g. source_only=40000,ga=20000")


# Sets published without train/val splits: their whole set is the adaptation source.
_WHOLE_SETS = ("gta5", "synthia", "synthia-seqs", "folder")


def default_split(spec: str) -> str:
    """The training split a dataset's official layout has: ``all`` for a set without
    splits (GTA5's split.mat is optional), else ``train``."""
    return "all" if parse_spec(spec)[0] in _WHOLE_SETS else "train"


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    if not args.source and not args.target:
        return synthetic_experiment(args.seed, args.scale)
    if not (args.source and args.target):
        raise UsageError("give both --source and --target (or neither, for the embedded "
                         "synthetic benchmark)")
    source_split = args.source_split or default_split(args.source)
    target_split = args.target_split or default_split(args.target)
    # Open every split now: a wrong root or layout stops here, before any training.
    open_dataset(args.source, source_split)
    open_dataset(args.target, target_split)
    evaluation = open_dataset(args.target, args.eval_split)
    if not evaluation.labelled:
        raise DatasetError(f"{evaluation!r}: the evaluation split needs labels")
    arch = replace(ARCHITECTURES[args.arch], num_classes=args.classes)
    if evaluation.label_space.num_classes != args.classes:
        raise UsageError(f"the target's labels are in {evaluation.label_space.name} "
                           f"({evaluation.label_space.num_classes} classes), the net predicts "
                           f"{args.classes}: pass --classes {evaluation.label_space.num_classes}")
    data = dict(crop_size=args.crop, seed=args.seed)
    settings: dict[str, SolverSettings] = {"source_only": SOURCE_ONLY, "oracle": SOURCE_ONLY,
                                           "ga": ADAPTATION, "ga_ca": ADAPTATION}
    for item in filter(None, args.iterations.split(",")):
        stage, _, count = item.partition("=")
        if stage not in settings or not count.isdigit():
            raise UsageError(f"--iterations {item!r}: expected STAGE=N with STAGE in {STAGES}")
        settings[stage] = replace(settings[stage], max_iter=int(count))
    if args.iter_size is not None:
        if args.iter_size < 1:
            raise UsageError(f"--iter-size {args.iter_size}: expected a positive count")
        settings = {stage: replace(s, iter_size=args.iter_size) for stage, s in settings.items()}
    oracle = DataSpec(args.target, args.oracle_split, **data) if args.oracle_split else None
    return Experiment(arch, DataSpec(args.source, source_split, **data),
                      DataSpec(args.target, target_split, unlabelled=True, **data),
                      (args.target, args.eval_split), settings, oracle=oracle,
                      initial_weights=args.weights)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    stages = stage_order(tuple(s for s in args.stages.split(",") if s))
    experiment = experiment_from_args(args)
    with stage_progress() as progress:
        scorer = TargetScorer(experiment, tile=args.eval_tile,
                              budget=int(args.memory_budget * 2**30))
        results = AdaptationRun(experiment, args.out, progress, precision=args.precision,
                                scorer=scorer).run(stages)
    for stage, result in results.items():
        means = ", ".join(f"{k}-class {100 * v:.1f}" for k, v in result["mean_iou"].items()
                          if v is not None)
        print(f"{STAGE_TITLES[stage]:>24}: target mIoU {means}")
    summary = Path(args.out) / "adapt_results.json"
    summary.write_text(json.dumps(results, indent=1))
    print(f"results: {summary}")
    return 0
