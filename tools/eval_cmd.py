"""``fcnwild eval``: per-class IoU and 19/16/13-class means on a dataset split.

Either runs a deploy net over the split (``--model/--weights``, tiled as
fyu/dilation's test.py) or scores a folder of saved label-id PNGs from any
framework (``--predictions DIR``), with the official Cityscapes arithmetic.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from fcnwild.data.base import SegmentationDataset, skipped_report
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import EvaluationResult, PredictionWriter
from fcnwild.data.inference import evaluate_net
from fcnwild.data.labels import CITYSCAPES_MEAN_BGR
from fcnwild.data.score_predictions import ENCODINGS, score_predictions
from fcnwild.nets.frontend import ARCHITECTURES
from fcnwild.nets.net import Net
from fcnwild.nets.tile_size import DEFAULT_MEMORY_BUDGET, budget_predictor

FRONT_END = ARCHITECTURES["frontend"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="SPEC",
                        help="FAMILY:ROOT[?key=value&...], FAMILY one of cityscapes, gta5, synthia, "
                             "synthia-seqs, bdd, folder (e.g. cityscapes:/data/cityscapes)")
    parser.add_argument("--split", default=None, help="dataset split (e.g. val)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="DIR",
                        help="score the label-id PNGs below DIR instead of running a model")
    source.add_argument("--model", metavar="PROTOTXT", help="deploy net to run")
    parser.add_argument("--weights", help="weights for --model (.caffemodel or .h5)")
    parser.add_argument("--prediction-encoding", choices=ENCODINGS, default="label_id",
                        help="what the pixel values of --predictions PNGs are (default: label ids, "
                             "as the official evaluator expects)")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="with --model: write DIR/labelIds/*.png and DIR/color/*.png")
    parser.add_argument("--mean", type=float, nargs=3, default=list(CITYSCAPES_MEAN_BGR), metavar=("B", "G", "R"),
                        help="BGR mean subtracted from the images (default: the published Cityscapes mean)")
    parser.add_argument("--margin", type=int, default=FRONT_END.margin,
                        help="context margin of the net per side (default: the dilated "
                             f"front-end's, {FRONT_END.margin})")
    parser.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                        metavar="GIB", help="memory a forward pass may take: the net runs on the "
                        "largest input that fits (the whole image when it does), predicting "
                        "exactly what tiles of the deploy's own input size predict "
                        f"(default {DEFAULT_MEMORY_BUDGET / 2**30:g})")
    parser.add_argument("--tile", type=int, metavar="PIXELS",
                        help="run the net on square inputs of this size instead of the "
                        "budget's choice (the deploy's own size reproduces fyu/dilation's tiling)")
    parser.add_argument("--output-blob", help="score blob to read (default: 'prob', else the last output)")
    parser.add_argument("--device", default="cpu", help="torch device for --model (cpu, cuda, cuda:1)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads decoding and counting --predictions PNGs")
    parser.add_argument("--json", metavar="FILE", help="write per-class IoU, the means and the confusion matrix")
    parser.add_argument("--csv", metavar="FILE", help="write the table row as CSV")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable or truncated image or label, or label with "
                             "ids outside the label space (default: leave such samples out and "
                             "report them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.model is not None and args.weights is None:
        raise SystemExit("fcnwild eval: error: --model needs --weights")
    if args.save_predictions and args.model is None:
        raise SystemExit("fcnwild eval: error: --save-predictions needs --model")
    dataset = open_dataset(args.dataset, args.split)
    print(dataset, file=sys.stderr)
    progress = not args.no_progress
    if args.predictions is not None:
        result: EvaluationResult | None = score_predictions(
            dataset, args.predictions, encoding=args.prediction_encoding,
            workers=args.workers, progress=progress, strict=args.strict)
    else:
        result = _evaluate_model(args, dataset, progress)
    if result is None:
        print(f"predictions written to {args.save_predictions} (the split has no labels to score)")
        return 0
    if result.skipped:
        print(skipped_report(result.skipped), file=sys.stderr)
    print(result.table())
    if args.json:
        result.write_json(args.json)
    if args.csv:
        result.write_csv(args.csv)
    return 0


def _evaluate_model(args: argparse.Namespace, dataset: SegmentationDataset,
                    progress: bool) -> EvaluationResult | None:
    net = Net(args.model, weights=args.weights, phase="TEST")
    net.to(args.device)
    predictor, choice = budget_predictor(
        net, args.mean, args.margin, dataset.image(0).shape[:2],
        budget=int(args.memory_budget * 2**30), tile=args.tile, batch_size=args.batch_size,
        output_blob=args.output_blob)
    print(f"net input {choice.input_size[0]}x{choice.input_size[1]}: {choice.tiles[0]} x "
          f"{choice.tiles[1]} tile(s) per image, about {choice.bytes / 2**30:.2f} GiB per forward",
          file=sys.stderr)
    writer = PredictionWriter(args.save_predictions, dataset.label_space) if args.save_predictions else None
    with torch.no_grad():
        return evaluate_net(predictor, dataset, writer=writer, progress=progress, strict=args.strict)
