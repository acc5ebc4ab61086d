"""``fcnwild test``: Caffe's ``caffe test``: mean of every output blob over N forward passes."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from fcnwild.nets.net import Net
from fcnwild.solvers.solver import mean_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="net prototxt")
    parser.add_argument("--weights", help="weights (.caffemodel, .h5, .pt)")
    parser.add_argument("--iterations", type=int, default=50, help="forward passes (default 50)")
    parser.add_argument("--phase", choices=["train", "test"], default="test")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--stage", action="append", default=[], help="net state stage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allow-python", action="store_true")


def run(args: argparse.Namespace) -> int:
    net = Net(args.model, weights=args.weights, phase=args.phase, level=args.level,
              stages=args.stage, allow_python=args.allow_python).to(args.device)
    with torch.no_grad():
        means, loss = mean_outputs(net, args.iterations)
    print(f"Loss: {loss:g}")
    for name, values in means.items():
        weight = net.loss_weights.get(name, 0.0)
        for value in np.asarray(values).reshape(-1):
            extra = f" (* {weight:g} = {weight * value:g} loss)" if weight else ""
            print(f"{name} = {value:g}{extra}")
    return 0
