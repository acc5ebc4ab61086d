"""The published dilated-network deploy prototxts (fyu/dilation) build with Caffe's shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fcnwild.nets.net import Net

PUBLISHED = Path(__file__).parent / "fixtures" / "published_prototxt"
SHAPES = json.loads((PUBLISHED / "caffe_blob_shapes.json").read_text())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_blob_and_param_shapes_match_caffe(name):
    expected = SHAPES[name]
    with torch.device("meta"):      # shapes only: no 500 MB of filler values
        net = Net(PUBLISHED / name, phase="test")
    assert [layer.type_name for layer in net.layers] == expected["layers"]
    assert {n: list(b.shape) for n, b in net.blobs.items()} == expected["native_input"]
    assert {n: [list(p.shape) for p in blobs] for n, blobs in net.params.items()} == \
        expected["param_shapes"]
    net.reshape_inputs({"data": (1, 3, 500, 500)})
    assert {n: list(b.shape) for n, b in net.blobs.items()} == expected["input_1x3x500x500"]


def test_front_end_output_is_input_minus_margin_over_eight():
    with torch.device("meta"):
        net = Net(PUBLISHED / "dilation10_cityscapes_deploy.prototxt", phase="test")
    for size in (500, 628, 1396):
        net.reshape_inputs({"data": (1, 3, size, size)})
        assert net.blobs["fc7"].shape[2:] == ((size - 372) // 8,) * 2
