"""``fcnwild dilation-train``: fyu/dilation's ``train.py`` — its options, the nets and solver it
writes (caffe-dilation's ImageLabelData / BinLabelData in front of the front-end or the
context module) — and the ``fcnwild train`` command that replaces its ``caffe train`` call."""
from __future__ import annotations

import argparse

from fcnwild.base.errors import UsageError
from fcnwild.nets.dilation_train import MODELS, PASCAL_MEAN_BGR, TrainOptions, \
    write_training_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=MODELS, help="which net to train: the front-end or the context module")
    parser.add_argument("--work_dir", default="training/",
                        help="folder for the nets, the solver and snapshots (default training/)")
    parser.add_argument("--weights", help="passed on to fcnwild train (front-end: required)")
    parser.add_argument("--train_image", required=True, help="list of training images")
    parser.add_argument("--train_label", required=True, help="list of training labels")
    parser.add_argument("--test_image", default="", help="list of test images (none: no test net)")
    parser.add_argument("--test_label", default="", help="list of test labels")
    parser.add_argument("--train_batch", type=int, default=8, help="training batch size (default 8)")
    parser.add_argument("--test_batch", type=int, default=2,
                        help="test batch size (default 2; 0: no test net)")
    parser.add_argument("--crop_size", type=int, default=500, help="training crop (default 500)")
    parser.add_argument("--mean", nargs="*", type=float, default=list(PASCAL_MEAN_BGR),
                        help="per-channel BGR mean subtracted from images (default PASCAL's)")
    parser.add_argument("--lr", type=float, default=0,
                        help="base learning rate (default 0: front-end 1e-4, context 1e-3)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--classes", type=int, required=True, help="number of classes")
    parser.add_argument("--up", action="store_true",
                        help="bilinear x8 upsampling of the scores before the loss (context net)")
    parser.add_argument("--layers", type=int, default=8,
                        help="context module depth (default 8)")
    parser.add_argument("--label_shape", nargs="*", type=int,
                        help="height and width of the context net's labels")
    parser.add_argument("--iter_size", type=int, default=1,
                        help="batches accumulated per update (default 1)")


def run(args: argparse.Namespace) -> int:
    options = {key: value for key, value in vars(args).items()
               if key in TrainOptions.__dataclass_fields__}
    if args.model == "frontend" and args.weights is None:
        raise UsageError("the front-end is trained from pretrained weights: give --weights")
    options["mean"] = tuple(args.mean)
    if args.label_shape is not None:
        options["label_shape"] = tuple(args.label_shape)
    paths = write_training_files(TrainOptions(**options), args.work_dir)
    for path in paths.values():
        print(f"Writing {path}")
    print(f"fcnwild train --solver {paths['solver']}" +
          (f" --weights {args.weights}" if args.weights else ""))
    return 0
