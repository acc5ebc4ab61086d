"""``fcnwild surgery``: VGG16's fc6/fc7 (InnerProduct) -> the front-end's convolutional fc6/fc7."""
from __future__ import annotations

import argparse

import torch

from fcnwild.nets.net import Net
from fcnwild.nets.surgery import transplant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="source weights, e.g. VGG_ILSVRC_16_layers.caffemodel")
    parser.add_argument("--model", required=True,
                        help="target net, e.g. prototxt/frontend/deploy.prototxt")
    parser.add_argument("--output", required=True,
                        help="weights to write (.caffemodel, .caffemodel.h5 or .pt)")


def run(args: argparse.Namespace) -> int:
    with torch.no_grad():
        net = Net(args.model, phase="test")
    reshaped = transplant(args.weights, net)
    for layer, index, before, after in reshaped:
        print(f"{layer}/{index}: {before} -> {after}")
    net.save(args.output)
    print(f"wrote {args.output} ({len(reshaped)} blobs reshaped; layers absent from the "
          "source keep their fillers' values)")
    return 0
