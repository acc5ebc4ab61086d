"""``fcnwild time``: Caffe's ``caffe time`` — per-layer forward/backward time and the total,
plus FLOPs, achieved GFLOP/s and the machine's GEMM GFLOP/s measured in the same run."""
from __future__ import annotations

import argparse

import torch

from fcnwild.base.errors import UsageError
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
    parser.add_argument("--gemm-size", type=int, default=4096, metavar="N",
                        help="time an NxN float32 matmul to compare with (default 4096)")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM measurement")
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
            raise UsageError(f"--input {item!r}: expected NAME=N,C,H,W") from None
    if shapes:
        net.reshape_inputs(shapes)
    print(time_net(net, args.iterations, 0 if args.no_gemm else args.gemm_size).format())
    return 0
