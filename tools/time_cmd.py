"""``fcnwild time``: Caffe's ``caffe time`` — per-layer forward/backward time and the total,
plus FLOPs, achieved GFLOP/s and the machine's GEMM GFLOP/s measured in the same run."""
from __future__ import annotations

import argparse
import contextlib

import torch

from fcnwild.layers import conv_tuning
from fcnwild.nets.net import Net
from fcnwild.nets.timing import time_net


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="net prototxt")
    parser.add_argument("--weights", help="optional weights")
    parser.add_argument("--iterations", type=int, default=50, help="timed passes (default 50)")
    parser.add_argument("--phase", choices=["train", "test"], default="train",
                        help="phase to build the net in (Caffe's time uses TRAIN)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=N,C,H,W",
                        help="reshape an input blob first, e.g. data=1,3,500,500")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM measurement")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure again which kernel runs each convolution operation on this "
                        "machine (the choice is otherwise measured once and cached; see "
                        "FCNWILD_CONV_TUNING)")
    parser.add_argument("--allow-python", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    net = Net(args.model, weights=args.weights, phase=args.phase,
              allow_python=args.allow_python).to(args.device)
    shapes = {}
    for item in args.input:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise SystemExit(f"fcnwild time: --input {item!r}: expected NAME=N,C,H,W") from None
    if shapes:
        net.reshape_inputs(shapes)
    tuning = conv_tuning.override("recalibrate") if args.recalibrate else contextlib.nullcontext()
    with tuning:
        report = time_net(net, args.iterations, measure_gemm=not args.no_gemm)
    print(report.format())
    return 0
