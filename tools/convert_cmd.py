"""``fcnwild convert``: weights between caffemodel, Caffe HDF5 and torch; prototxt V0/V1 -> V2.

The formats follow the file names: ``.caffemodel`` (binary NetParameter),
``.h5``/``.caffemodel.h5`` (Caffe's HDF5 layout), ``.pt``/``.pth`` (a torch
state dict {"<layer>/<i>": tensor}), ``.prototxt`` (a net definition, written
upgraded to the current format).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import FcnwildError, WeightsError
from fcnwild.nets import weights
from fcnwild.nets.net import Net
from fcnwild.nets.prototxt import read_net_param, write_text

_NET_SUFFIXES = (".prototxt", ".pbtxt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="input file (.caffemodel, .h5, .pt or .prototxt)")
    parser.add_argument("target", help="output file; its suffix picks the format")
    parser.add_argument("--model", help="net prototxt: build the net, load the source weights "
                        "into it and save them as the net would (full layer definitions in a "
                        "caffemodel, shared params written once in HDF5)")


def run(args: argparse.Namespace) -> int:
    source, target = Path(args.source), Path(args.target)
    if target.suffix.lower() in _NET_SUFFIXES:
        if weights.is_hdf5(source) or weights.is_torch(source):
            raise FcnwildError("a net definition can only come from a prototxt or caffemodel",
                               file=source)
        net = read_net_param(source)
        for layer in net.layer:
            layer.ClearField("blobs")
        write_text(target, net)
        print(f"wrote {target}: {len(net.layer)} layers (upgraded to the current format)")
        return 0
    if args.model:
        net = Net(args.model, weights=source, phase="test")
        net.save(target)
        print(f"wrote {target}: weights of {len(net.params)} layers")
        return 0
    with weights.open_weights(source) as stored:
        legacy = [name for name, blobs in stored.items()
                  if any(blob is not None and blob.legacy_shape for blob in blobs)]
        if legacy:
            # Caffe matches such blobs to the net's shapes when it loads them; written in
            # another format they would keep the 4-D shape and fit no net.
            raise WeightsError(f"layers {legacy[:3]}{' ...' if len(legacy) > 3 else ''} store "
                               "legacy 4-D blob shapes (num/channels/height/width, a V1 "
                               "caffemodel): pass --model NET so the net gives each blob its "
                               "shape", file=source)
        arrays = stored.arrays()
    if weights.is_hdf5(target) or weights.is_torch(target):
        owned = {name: {i: a for i, a in enumerate(blobs) if a is not None}
                 for name, blobs in arrays.items()}
        if weights.is_hdf5(target):
            weights.write_caffemodel_h5(target, list(arrays), owned)
        else:
            weights.write_torch_weights(target, owned)
    else:
        if any(a is None for blobs in arrays.values() for a in blobs):
            raise FcnwildError("the source stores shared params only under their owner layer; "
                               "pass --model so the net can fill them in for a caffemodel",
                               file=source)
        net_param = caffe_pb2.NetParameter()
        for name in arrays:
            net_param.layer.add(name=name)
        weights.write_caffemodel(target, net_param, arrays)
    print(f"wrote {target}: weights of {len(arrays)} layers")
    return 0
