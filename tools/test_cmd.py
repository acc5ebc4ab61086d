"""``fcnwild test``: Caffe's ``caffe test``: mean of every output blob over N forward passes.

Prints what ``caffe test`` logs: ``Batch i, <output> = <value>`` for every element
of every output after each forward, then ``Loss: <mean weighted loss>`` and
``<output> = <mean>`` (with `` (* <loss weight> = <weighted> loss)`` for loss tops).
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from fcnwild.nets.net import Net
from fcnwild.solvers.solver import mean_outputs
from fcnwild.tools.caffe_flags import add_flag, add_gpu_flag, add_net_state_flags, \
    single_device, stages
from fcnwild.tools.progress import setup_logging

log = logging.getLogger("fcnwild")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "model", required=True, help="net prototxt")
    add_flag(parser, "weights", help="weights (.caffemodel, .h5, .pt)")
    add_flag(parser, "iterations", type=int, default=50, help="forward passes (default 50)")
    add_net_state_flags(parser, default_phase="test")
    add_gpu_flag(parser, "the first id is used")
    parser.add_argument("--device", help="torch device instead of -gpu (default cpu)")
    parser.add_argument("--allow-python", action="store_true",
                        help="allow Python layers (they run arbitrary code)")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    device = single_device(args)
    net = Net(args.model, weights=args.weights, phase=args.phase, level=args.level or 0,
              stages=stages(args), allow_python=args.allow_python).to(device)
    log.info("Running for %d iterations.", args.iterations)

    def print_batch(i: int, loss: float) -> None:
        for name in net.outputs:
            for value in net.blobs[name].data.reshape(-1):
                print(f"Batch {i}, {name} = {value:g}")
    means, loss = mean_outputs(net, args.iterations, on_batch=print_batch)
    print(f"Loss: {loss:g}")
    for name, values in means.items():
        weight = net.loss_weights.get(name, 0.0)
        for value in np.asarray(values).reshape(-1):
            extra = f" (* {weight:g} = {weight * value:g} loss)" if weight else ""
            print(f"{name} = {value:g}{extra}")
    return 0
