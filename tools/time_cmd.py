"""``fcnwild time``: Caffe's ``caffe time`` — per-layer forward/backward time and the total,
plus FLOPs, achieved GFLOP/s and the machine's GEMM GFLOP/s measured in the same run.
Input blobs hold zeros, as in ``caffe time`` (unless ``--input`` reshapes them)."""
from __future__ import annotations

import argparse
import contextlib

import torch

from fcnwild.base.errors import UsageError
from fcnwild.layers import conv_tuning
from fcnwild.nets.net import Net
from fcnwild.nets.timing import time_net
from fcnwild.tools.caffe_flags import add_flag, add_gpu_flag, add_net_state_flags, \
    single_device, stages
from fcnwild.tools.progress import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "model", required=True, help="net prototxt")
    add_flag(parser, "weights", help="optional weights")
    add_flag(parser, "iterations", type=int, default=50, help="timed passes (default 50)")
    add_net_state_flags(parser, default_phase="train")
    add_gpu_flag(parser, "the first id is used")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=N,C,H,W",
                        help="reshape an input blob first, e.g. data=1,3,500,500")
    parser.add_argument("--device", help="torch device instead of -gpu (default cpu)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--gemm-size", type=int, default=4096, metavar="N",
                        help="time an NxN float32 matmul to compare with (default 4096)")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM measurement")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure again which kernel runs each convolution operation on this "
                        "machine (the choice is otherwise measured once and cached; see "
                        "FCNWILD_CONV_TUNING)")
    parser.add_argument("--allow-python", action="store_true",
                        help="allow Python layers (they run arbitrary code)")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = single_device(args)
    net = Net(args.model, weights=args.weights, phase=args.phase, level=args.level or 0,
              stages=stages(args), allow_python=args.allow_python).to(device)
    shapes = {}
    for item in args.input:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise UsageError(f"--input {item!r}: expected NAME=N,C,H,W") from None
    if shapes:
        net.reshape_inputs(shapes)
    tuning = conv_tuning.override("recalibrate") if args.recalibrate else contextlib.nullcontext()
    with tuning:
        report = time_net(net, args.iterations, 0 if args.no_gemm else args.gemm_size)
    print(report.format())
    return 0
