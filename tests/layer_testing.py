"""Building single layers from prototxt text in tests."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.layers.base import Layer, LayerContext
from fcnwild.layers.registry import layer_class


def layer_param(text: str) -> caffe_pb2.LayerParameter:
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def make_layer(text: str, bottom_shapes: Sequence[Sequence[int]] | None = None, *,
               phase: int = caffe_pb2.TRAIN, base_dir: Path | None = None,
               allow_python: bool = False) -> Layer:
    """Construct the layer described by ``text``; set it up when shapes are given."""
    param = layer_param(text)
    ctx = LayerContext(phase=phase, source="test.prototxt", base_dir=base_dir,
                       allow_python=allow_python)
    layer = layer_class(param.type)(param, ctx)
    if bottom_shapes is not None:
        layer.setup([tuple(s) for s in bottom_shapes])
    return layer
