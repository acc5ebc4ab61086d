"""Net surgery: weights of one net into another whose layers have other shapes but the
same number of values — VGG16's fully connected fc6/fc7 into the front-end's
convolutional fc6 (7x7, dilation 4) and fc7 (1x1), as FCN and the front-end did.

InnerProduct weights (N, C*k*k) laid out as Caffe flattens (C, k, k) are exactly
the (N, C, k, k) convolution weights; the values are copied flat. Dilation only
changes where the kernel's taps land, so the same numbers initialise fc6.
"""
from __future__ import annotations

import os

import torch

from fcnwild.base.errors import WeightsError
from fcnwild.nets.net import Net
from fcnwild.nets.weights import open_weights

PathLike = str | os.PathLike


def transplant(source: PathLike, net: Net) -> list[tuple[str, int, tuple, tuple]]:
    """Copy every blob of ``source`` into the layer of ``net`` with the same name,
    reshaping when only the shape differs. Returns (layer, index, from, to) for each
    reshaped blob. Layers missing on either side are skipped (e.g. VGG's fc8)."""
    reshaped = []
    with open_weights(source) as stored:
        for name, blobs in stored.items():
            layer = net.layer_dict.get(name)
            if layer is None:
                continue
            if len(blobs) != len(layer.blobs):
                raise WeightsError(f"{len(blobs)} blobs in the source, {len(layer.blobs)} in "
                                   "the net", file=source, layer=name)
            for k, (blob, target) in enumerate(zip(blobs, layer.blobs)):
                if blob is None:
                    continue
                if blob.count != target.numel():
                    raise WeightsError(
                        f"param {k}: {blob.count} values {blob.shape} cannot fill "
                        f"{tuple(target.shape)} ({target.numel()} values)", file=source,
                        layer=name)
                with torch.no_grad():
                    target.copy_(torch.from_numpy(blob.load()).reshape(target.shape))
                if tuple(blob.shape) != tuple(target.shape) and not blob.fits(target.shape):
                    reshaped.append((name, k, tuple(blob.shape), tuple(target.shape)))
    return reshaped
