"""fcnwild.caffe.proto.caffe_pb2 is our proto module, and it speaks Caffe's wire format.

Real Caffe cannot run here, so its side of the wire is a descriptor built at
run time from a hand-written subset of BVLC caffe.proto (package ``caffe``,
Caffe's field numbers, types and packing) in a pool of its own. Messages go
both ways byte for byte; our fields numbered 10000 and up reach Caffe as
unknown fields, which protobuf keeps and writes back, so a file passed through
Caffe's tools keeps them.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
)
from google.protobuf.unknown_fields import UnknownFieldSet

import fcnwild.base.caffe_pb2 as base_pb2
from fcnwild.caffe import io as caffe_io

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED
STRING, BYTES, BOOL, FLOAT, DOUBLE = F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_BOOL, F.TYPE_FLOAT, \
    F.TYPE_DOUBLE
INT32, INT64, UINT32, MESSAGE, ENUM = F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, \
    F.TYPE_MESSAGE, F.TYPE_ENUM
PACKED = "packed"

# message -> (field name, number, label, type, message/enum name or PACKED or None)
CAFFE_SUBSET = {
    "BlobShape": [("dim", 1, REPEATED, INT64, PACKED)],
    "BlobProto": [("num", 1, OPTIONAL, INT32, None), ("channels", 2, OPTIONAL, INT32, None),
                  ("height", 3, OPTIONAL, INT32, None), ("width", 4, OPTIONAL, INT32, None),
                  ("data", 5, REPEATED, FLOAT, PACKED), ("diff", 6, REPEATED, FLOAT, PACKED),
                  ("shape", 7, OPTIONAL, MESSAGE, "BlobShape"),
                  ("double_data", 8, REPEATED, DOUBLE, PACKED),
                  ("double_diff", 9, REPEATED, DOUBLE, PACKED)],
    "BlobProtoVector": [("blobs", 1, REPEATED, MESSAGE, "BlobProto")],
    "Datum": [("channels", 1, OPTIONAL, INT32, None), ("height", 2, OPTIONAL, INT32, None),
              ("width", 3, OPTIONAL, INT32, None), ("data", 4, OPTIONAL, BYTES, None),
              ("label", 5, OPTIONAL, INT32, None), ("float_data", 6, REPEATED, FLOAT, None),
              ("encoded", 7, OPTIONAL, BOOL, None)],
    "FillerParameter": [("type", 1, OPTIONAL, STRING, None), ("value", 2, OPTIONAL, FLOAT, None),
                        ("std", 6, OPTIONAL, FLOAT, None)],
    "ParamSpec": [("name", 1, OPTIONAL, STRING, None), ("lr_mult", 3, OPTIONAL, FLOAT, None),
                  ("decay_mult", 4, OPTIONAL, FLOAT, None)],
    "NetStateRule": [("phase", 1, OPTIONAL, ENUM, "Phase"),
                     ("stage", 4, REPEATED, STRING, None)],
    "ConvolutionParameter": [("num_output", 1, OPTIONAL, UINT32, None),
                             ("bias_term", 2, OPTIONAL, BOOL, None),
                             ("pad", 3, REPEATED, UINT32, None),
                             ("kernel_size", 4, REPEATED, UINT32, None),
                             ("stride", 6, REPEATED, UINT32, None),
                             ("weight_filler", 7, OPTIONAL, MESSAGE, "FillerParameter"),
                             ("dilation", 18, REPEATED, UINT32, None)],
    "CropParameter": [("axis", 1, OPTIONAL, INT32, None), ("offset", 2, REPEATED, UINT32, None)],
    "LossParameter": [("ignore_label", 1, OPTIONAL, INT32, None),
                      ("normalize", 2, OPTIONAL, BOOL, None)],
    "PythonParameter": [("module", 1, OPTIONAL, STRING, None),
                        ("layer", 2, OPTIONAL, STRING, None),
                        ("param_str", 3, OPTIONAL, STRING, None)],
    "LayerParameter": [("name", 1, OPTIONAL, STRING, None), ("type", 2, OPTIONAL, STRING, None),
                       ("bottom", 3, REPEATED, STRING, None), ("top", 4, REPEATED, STRING, None),
                       ("loss_weight", 5, REPEATED, FLOAT, None),
                       ("param", 6, REPEATED, MESSAGE, "ParamSpec"),
                       ("blobs", 7, REPEATED, MESSAGE, "BlobProto"),
                       ("include", 8, REPEATED, MESSAGE, "NetStateRule"),
                       ("phase", 10, OPTIONAL, ENUM, "Phase"),
                       ("propagate_down", 11, REPEATED, BOOL, None),
                       ("loss_param", 101, OPTIONAL, MESSAGE, "LossParameter"),
                       ("convolution_param", 106, OPTIONAL, MESSAGE, "ConvolutionParameter"),
                       ("python_param", 130, OPTIONAL, MESSAGE, "PythonParameter"),
                       ("crop_param", 144, OPTIONAL, MESSAGE, "CropParameter")],
    "NetParameter": [("name", 1, OPTIONAL, STRING, None), ("input", 3, REPEATED, STRING, None),
                     ("input_dim", 4, REPEATED, INT32, None),
                     ("force_backward", 5, OPTIONAL, BOOL, None),
                     ("layer", 100, REPEATED, MESSAGE, "LayerParameter")],
    "SolverParameter": [("test_iter", 3, REPEATED, INT32, None),
                        ("test_interval", 4, OPTIONAL, INT32, None),
                        ("base_lr", 5, OPTIONAL, FLOAT, None),
                        ("max_iter", 7, OPTIONAL, INT32, None),
                        ("lr_policy", 8, OPTIONAL, STRING, None),
                        ("momentum", 11, OPTIONAL, FLOAT, None),
                        ("weight_decay", 12, OPTIONAL, FLOAT, None),
                        ("snapshot_prefix", 15, OPTIONAL, STRING, None),
                        ("net", 24, OPTIONAL, STRING, None),
                        ("iter_size", 36, OPTIONAL, INT32, None),
                        ("type", 40, OPTIONAL, STRING, None)],
}


def caffe_classes() -> dict[str, type]:
    """Message classes of the subset, in a descriptor pool of their own."""
    file = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe",
                                              syntax="proto2")
    phase = file.enum_type.add(name="Phase")
    phase.value.add(name="TRAIN", number=0)
    phase.value.add(name="TEST", number=1)
    for message_name, fields in CAFFE_SUBSET.items():
        message = file.message_type.add(name=message_name)
        for name, number, label, type_, extra in fields:
            field = message.field.add(name=name, number=number, label=label, type=type_)
            if extra == PACKED:
                field.options.packed = True
            elif extra is not None:
                field.type_name = ".caffe." + extra
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe." + name))
            for name in CAFFE_SUBSET}


CAFFE = caffe_classes()

FCN_NET = """
name: "fcn"
layer { name: "data" type: "Python" top: "data" top: "label"
        python_param { module: "voc_layers" layer: "SBDDSegDataLayer"
                       param_str: "{'split': 'train', 'seed': 1337}" } }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 64 pad: 100 kernel_size: 3 stride: 1 dilation: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "score" type: "Crop" bottom: "conv1_1" bottom: "data" top: "score"
        crop_param { axis: 2 offset: 19 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_weight: 1 propagate_down: true propagate_down: false include { phase: TRAIN }
        loss_param { ignore_label: 255 normalize: false } }
"""


def test_the_three_import_forms_give_one_module():
    import fcnwild.caffe.proto.caffe_pb2 as dotted
    from fcnwild.caffe.proto import caffe_pb2 as from_package
    from fcnwild.caffe.proto.caffe_pb2 import NetParameter
    assert from_package is dotted is base_pb2
    assert importlib.import_module("fcnwild.caffe.proto.caffe_pb2") is base_pb2
    assert NetParameter is base_pb2.NetParameter
    assert isinstance(dotted.LayerParameter(), base_pb2.LayerParameter)
    assert dotted.TRAIN == 0 and dotted.TEST == 1


def test_a_net_from_caffe_parses_and_writes_back_byte_for_byte():
    caffe_net = text_format.Parse(FCN_NET, CAFFE["NetParameter"]())
    wire = caffe_net.SerializeToString()
    ours = base_pb2.NetParameter.FromString(wire)
    assert len(UnknownFieldSet(ours)) == 0
    assert ours.layer[1].convolution_param.weight_filler.std == pytest.approx(0.01)
    assert list(ours.layer[2].crop_param.offset) == [19]
    assert ours.layer[3].include[0].phase == base_pb2.TRAIN
    assert list(ours.layer[3].propagate_down) == [True, False]
    assert ours.SerializeToString() == wire
    assert text_format.MessageToString(ours) == text_format.MessageToString(caffe_net)


def test_our_extension_fields_survive_a_pass_through_caffe():
    ours = text_format.Parse(FCN_NET, base_pb2.NetParameter())
    mil = ours.layer.add(name="mil", type="ConstrainedMILLoss", bottom=["score", "label"])
    mil.constrained_mil_param.class_stats = "stats.npz"
    mil.constrained_mil_param.lower_slack = 3
    ours.layer[0].segmentation_data_param.source = "cityscapes:/data"
    wire = ours.SerializeToString()

    caffe_net = CAFFE["NetParameter"].FromString(wire)
    assert [layer.name for layer in caffe_net.layer] == ["data", "conv1_1", "score", "loss", "mil"]
    assert caffe_net.layer[4].type == "ConstrainedMILLoss"
    unknown = UnknownFieldSet(caffe_net.layer[4])
    assert [field.field_number for field in unknown] == [10000]
    assert [field.field_number for field in UnknownFieldSet(caffe_net.layer[0])] == [10001]
    rewritten = caffe_net.SerializeToString()
    assert rewritten == wire
    back = base_pb2.NetParameter.FromString(rewritten)
    assert back.layer[4].constrained_mil_param.class_stats == "stats.npz"
    assert back.layer[4].constrained_mil_param.lower_slack == 3
    assert back.layer[0].segmentation_data_param.source == "cityscapes:/data"


def test_solver_parameters_cross_both_ways():
    caffe_solver = CAFFE["SolverParameter"](net="train.prototxt", base_lr=1e-10,
                                            lr_policy="fixed", momentum=0.99, iter_size=20,
                                            weight_decay=0.0005, max_iter=100000,
                                            test_iter=[736], test_interval=999999999,
                                            snapshot_prefix="snapshot/train", type="SGD")
    ours = base_pb2.SolverParameter.FromString(caffe_solver.SerializeToString())
    assert (ours.net, ours.iter_size, list(ours.test_iter)) == ("train.prototxt", 20, [736])
    assert ours.base_lr == pytest.approx(1e-10)
    ours.adversarial_param.classifier_steps = 2
    wire = ours.SerializeToString()
    assert CAFFE["SolverParameter"].FromString(wire).SerializeToString() == wire


def test_blobs_and_datums_written_by_io_read_in_caffe_and_back():
    arr = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    wire = caffe_io.array_to_blobproto(arr, diff=-arr).SerializeToString()
    caffe_blob = CAFFE["BlobProto"].FromString(wire)
    assert list(caffe_blob.shape.dim) == [2, 3, 4, 5]
    np.testing.assert_array_equal(np.array(caffe_blob.data, dtype=np.float32), arr.ravel())
    assert caffe_blob.SerializeToString() == wire

    legacy = CAFFE["BlobProto"](num=1, channels=3, height=1, width=2, data=[1, 2, 3, 4, 5, 6])
    back = caffe_io.blobproto_to_array(base_pb2.BlobProto.FromString(legacy.SerializeToString()))
    np.testing.assert_array_equal(back, np.arange(1.0, 7.0).reshape(1, 3, 1, 2))

    vector = caffe_io.arraylist_to_blobprotovector_str([arr[0], arr[1, 0]])
    assert CAFFE["BlobProtoVector"].FromString(vector).SerializeToString() == vector

    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum_wire = caffe_io.array_to_datum(pixels, label=3).SerializeToString()
    caffe_datum = CAFFE["Datum"].FromString(datum_wire)
    assert (caffe_datum.channels, caffe_datum.label, caffe_datum.data) == (2, 3, pixels.tobytes())
    float_datum = CAFFE["Datum"](channels=1, height=1, width=2, float_data=[0.5, -1.5], label=1)
    np.testing.assert_array_equal(
        caffe_io.datum_to_array(base_pb2.Datum.FromString(float_datum.SerializeToString())),
        [[[0.5, -1.5]]])
