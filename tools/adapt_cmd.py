"""``fcnwild adapt``: source-only -> GA -> GA+CA, each stage from the previous one, scored on
the labelled target split. The embedded synthetic benchmark by default; real datasets by
``--source gta5:ROOT --target cityscapes:ROOT`` (and the splits they use)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fcnwild.base.errors import DatasetError, UsageError
from fcnwild.data.datasets import open_dataset
from fcnwild.nets.frontend import ARCHITECTURES, DataSpec
from fcnwild.nets.precision import PRECISIONS
from fcnwild.tools.experiment.config import (
    STAGE_TITLES,
    STAGES,
    Experiment,
    stage_order,
    synthetic_experiment,
)
from fcnwild.tools.experiment.run import AdaptationRun
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
    real.add_argument("--source-split", default="train")
    real.add_argument("--target-split", default="train", help="unlabelled training images")
    real.add_argument("--eval-split", default="val", help="labelled target split to score on")
    real.add_argument("--oracle-split", help="labelled target training split for the oracle")
    real.add_argument("--arch", default="frontend", choices=sorted(ARCHITECTURES))
    real.add_argument("--classes", type=int, default=19)
    real.add_argument("--crop", type=int, default=500)
    real.add_argument("--weights", help="initial weights of the source-only stage "
                      "(e.g. VGG-16 after `fcnwild surgery`)")
    real.add_argument("--iterations", default="",
                      help="per-stage iterations, e.g. source_only=40000,ga=20000")


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    if not args.source and not args.target:
        return synthetic_experiment(args.seed, args.scale)
    if not (args.source and args.target):
        raise UsageError("give both --source and --target (or neither, for the embedded "
                         "synthetic benchmark)")
    # Open every split now: a wrong root or layout stops here, before any training.
    open_dataset(args.source, args.source_split)
    open_dataset(args.target, args.target_split)
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
    oracle = DataSpec(args.target, args.oracle_split, **data) if args.oracle_split else None
    return Experiment(arch, DataSpec(args.source, args.source_split, **data),
                      DataSpec(args.target, args.target_split, unlabelled=True, **data),
                      (args.target, args.eval_split), settings, oracle=oracle,
                      initial_weights=args.weights)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    stages = stage_order(tuple(s for s in args.stages.split(",") if s))
    experiment = experiment_from_args(args)
    with stage_progress() as progress:
        results = AdaptationRun(experiment, args.out, progress,
                                precision=args.precision).run(stages)
    for stage, result in results.items():
        means = ", ".join(f"{k}-class {100 * v:.1f}" for k, v in result["mean_iou"].items()
                          if v is not None)
        print(f"{STAGE_TITLES[stage]:>24}: target mIoU {means}")
    summary = Path(args.out) / "adapt_results.json"
    summary.write_text(json.dumps(results, indent=1))
    print(f"results: {summary}")
    return 0
