"""Caffe's implicit Split layers (insert_splits.cpp).

A blob consumed by several layers (or consumed and also used as a weighted
loss) gets a Split layer whose tops feed each consumer; their diffs are summed
in backward. Reproducing Caffe's names makes every blob of a Caffe reference
file, split outputs included, addressable by the same name here.
"""
from __future__ import annotations

import os
from collections import defaultdict

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(param: caffe_pb2.NetParameter, *, file: str | os.PathLike | None = None
                  ) -> caffe_pb2.NetParameter:
    layers = list(param.layer)
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise NetError(f"unknown bottom blob '{blob}' (bottom {j}); no earlier layer "
                               "produces it", layer=layer.name, file=file)
            source_of[(i, j)] = last_top[blob]
            consumers[last_top[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        # A top used as a weighted loss counts as one more consumer.
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(layers):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(layer.bottom):
            top = source_of[(i, j)]
            if consumers[top] > 1:
                layer.bottom[j] = split_blob_name(layers[top[0]].name, blob, top[1],
                                                  next_split[top])
                next_split[top] += 1
        for j, blob in enumerate(layer.top):
            count = consumers[(i, j)]
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add(name=split_layer_name(layer.name, blob, j), type="Split")
            split.bottom.append(blob)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, blob, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                layer.ClearField("loss_weight")
                next_split[(i, j)] += 1
    return out
