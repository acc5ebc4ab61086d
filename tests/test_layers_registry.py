"""The layer registry: every type BVLC Caffe master registers (and caffe-dilation's data
layers) is registered here, and an unknown type is an error naming it and the layer."""
from __future__ import annotations

import pytest

from fcnwild.base.errors import NetError
from fcnwild.layers.registry import layer_class, registered_types
from fcnwild.nets.net import Net

# The types BVLC Caffe master registers (REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR in
# src/caffe/layers/*.cpp and layer_factory.cpp; Python with WITH_PYTHON_LAYER).
CAFFE_MASTER_TYPES = (
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip",
    "Concat", "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout",
    "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten",
    "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss",
    "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN",
    "ReLU", "Reduction", "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss",
    "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold",
    "Tile", "WindowData",
)
# fyu/caffe-dilation's data layers, and fcnwild's own types.
CAFFE_DILATION_TYPES = ("ImageLabelData", "BinLabelData")
FCNWILD_TYPES = ("ConstrainedMILLoss", "DomainLabel", "SegmentationData")


def test_every_caffe_master_type_is_registered():
    missing = sorted(set(CAFFE_MASTER_TYPES) - set(registered_types()))
    assert not missing, f"Caffe types without a layer class: {missing}"


def test_the_registry_is_caffes_plus_the_named_extensions():
    assert set(registered_types()) == \
        set(CAFFE_MASTER_TYPES) | set(CAFFE_DILATION_TYPES) | set(FCNWILD_TYPES)
    assert registered_types() == sorted(registered_types())


@pytest.mark.parametrize("type_name", CAFFE_MASTER_TYPES + CAFFE_DILATION_TYPES)
def test_each_class_reports_its_caffe_type(type_name):
    assert layer_class(type_name).type_name == type_name


def test_an_unknown_type_names_the_type_the_layer_and_the_file(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x" '
                     'input_param { shape { dim: 1 } } }\n'
                     'layer { name: "roi" type: "ROIPooling" bottom: "x" top: "y" }\n')
    with pytest.raises(NetError) as error:
        Net(model)
    message = str(error.value)
    assert str(model) in message and "layer 'roi'" in message
    assert "unknown layer type 'ROIPooling'" in message and "Convolution" in message
