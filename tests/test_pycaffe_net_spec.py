"""fcnwild.caffe.net_spec writes the prototxt pycaffe's net_spec writes.

Expected texts are derived from pycaffe's rules: a layer is named after its
first top, tops after their NetSpec attribute (else ``<Type><count>``),
in-place layers reuse their bottom, keyword arguments go into the type's
``*_param`` when that message has the field and into LayerParameter otherwise,
and protobuf's text format prints fields in field-number order.
"""
from __future__ import annotations

import pickle

import pytest
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.caffe.coord_map import crop
from fcnwild.caffe.net_spec import (
    Function,
    NetSpec,
    Top,
    layers as L,
    param_name_dict,
    params as P,
    to_proto,
)
from fcnwild.nets.net import Net

LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=LEARNED)
    return conv, L.ReLU(conv, in_place=True)


def mini_fcn(split: str, data=None) -> NetSpec:
    """An FCN-32s in miniature, written the way fcn.berkeleyvision.org's net.py are."""
    n = NetSpec()
    if data is None:
        pydata_params = dict(split=split, seed=1337)
        pylayer = 'SegDataLayer' if split == 'train' else 'ValDataLayer'
        n.data, n.label = L.Python(module='seg_layers', layer=pylayer, ntop=2,
                                   param_str=str(pydata_params))
    else:
        n.data, n.label = data
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 8, pad=100)
    n.pool1 = L.Pooling(n.relu1_1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc6, n.relu6 = conv_relu(n.pool1, 16, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop6, num_output=21, kernel_size=1, pad=0, param=LEARNED)
    n.upscore = L.Deconvolution(n.score_fr,
                                convolution_param=dict(num_output=21, kernel_size=4, stride=2,
                                                       bias_term=False),
                                param=[dict(lr_mult=0)])
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n


LEARNED_TEXT = """  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
"""

MINI_FCN_BODY = """layer {
  name: "conv1_1"
  type: "Convolution"
  bottom: "data"
  top: "conv1_1"
""" + LEARNED_TEXT + """  convolution_param {
    num_output: 8
    pad: 100
    kernel_size: 3
    stride: 1
  }
}
layer {
  name: "relu1_1"
  type: "ReLU"
  bottom: "conv1_1"
  top: "conv1_1"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1_1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "fc6"
  type: "Convolution"
  bottom: "pool1"
  top: "fc6"
""" + LEARNED_TEXT + """  convolution_param {
    num_output: 16
    pad: 0
    kernel_size: 7
    stride: 1
  }
}
layer {
  name: "relu6"
  type: "ReLU"
  bottom: "fc6"
  top: "fc6"
}
layer {
  name: "drop6"
  type: "Dropout"
  bottom: "fc6"
  top: "fc6"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "score_fr"
  type: "Convolution"
  bottom: "fc6"
  top: "score_fr"
""" + LEARNED_TEXT + """  convolution_param {
    num_output: 21
    pad: 0
    kernel_size: 1
  }
}
layer {
  name: "upscore"
  type: "Deconvolution"
  bottom: "score_fr"
  top: "upscore"
  param {
    lr_mult: 0
  }
  convolution_param {
    num_output: 21
    bias_term: false
    kernel_size: 4
    stride: 2
  }
}
layer {
  name: "score"
  type: "Crop"
  bottom: "upscore"
  bottom: "data"
  top: "score"
  crop_param {
    axis: 2
    offset: 94
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "score"
  bottom: "label"
  top: "loss"
  loss_param {
    ignore_label: 255
    normalize: false
  }
}
"""


def python_data_text(layer: str, split: str) -> str:
    return f"""layer {{
  name: "data"
  type: "Python"
  top: "data"
  top: "label"
  python_param {{
    module: "seg_layers"
    layer: "{layer}"
    param_str: "{{\\'split\\': \\'{split}\\', \\'seed\\': 1337}}"
  }}
}}
"""


@pytest.mark.parametrize("split, pylayer", [("train", "SegDataLayer"), ("val", "ValDataLayer")])
def test_fcn_style_train_val_nets_match_pycaffe_text(split, pylayer):
    # The crop offset 94 follows from the coordinate maps: conv1_1 shifts by
    # 100 - 1 = 99, pool1 halves (-0.25 at pool scale), fc6 (7x7) shifts by -3,
    # the 2x deconv by +1.5; composed, data pixel 0 sits at upscore pixel 94.
    assert str(mini_fcn(split).to_proto()) == python_data_text(pylayer, split) + MINI_FCN_BODY


def test_mini_fcn_crop_aligns_score_with_data_in_our_net():
    for height, width in [(40, 40), (37, 53)]:
        n = mini_fcn("deploy", data=(L.Input(shape=dict(dim=[1, 3, height, width])),
                                     L.Input(shape=dict(dim=[1, 1, height, width]))))
        net = Net(n.to_proto(), phase=caffe_pb2.TEST)
        assert tuple(net.blobs["score"].shape) == (1, 21, height, width)
        assert tuple(net.blobs["upscore"].shape)[2] > height + 94


def test_fcn8s_crop_offsets_are_the_published_ones():
    """The VGG16 FCN-8s skip crops of fcn.berkeleyvision.org's voc-fcn8s are
    offsets 5, 9 and 31 (and 19 for FCN-32s' score crop)."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    bottom = n.data
    pools = []
    for stage, (convs, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for i in range(convs):
            pad = 100 if stage == 0 and i == 0 else 1
            conv, relu = conv_relu(bottom, width, pad=pad)
            n[f"conv{stage + 1}_{i + 1}"], n[f"relu{stage + 1}_{i + 1}"] = conv, relu
            bottom = relu
        bottom = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n[f"pool{stage + 1}"] = bottom
        pools.append(bottom)
    n.fc6, n.relu6 = conv_relu(bottom, 64, ks=7, pad=0)
    n.fc7, n.relu7 = conv_relu(n.relu6, 64, ks=1, pad=0)
    n.score_fr = L.Convolution(n.relu7, num_output=21, kernel_size=1, pad=0)

    def upscore(bottom, ks, stride):
        return L.Deconvolution(bottom, convolution_param=dict(num_output=21, kernel_size=ks,
                                                              stride=stride, bias_term=False))
    n.upscore32 = upscore(n.score_fr, 64, 32)
    n.upscore2 = upscore(n.score_fr, 4, 2)
    n.score_pool4 = L.Convolution(n.pool4, num_output=21, kernel_size=1, pad=0)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = upscore(n.fuse_pool4, 4, 2)
    n.score_pool3 = L.Convolution(n.pool3, num_output=21, kernel_size=1, pad=0)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = upscore(n.fuse_pool3, 16, 8)
    n.score = crop(n.upscore8, n.data)
    n.score32 = crop(n.upscore32, n.data)
    layers = {layer.name: layer for layer in n.to_proto().layer}
    offsets = {name: (layers[name].crop_param.axis, list(layers[name].crop_param.offset))
               for name in ["score_pool4c", "score_pool3c", "score", "score32"]}
    assert offsets == {"score_pool4c": (2, [5]), "score_pool3c": (2, [9]),
                       "score": (2, [31]), "score32": (2, [19])}


def test_param_name_dict_follows_the_layer_parameter_messages():
    names = param_name_dict()
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    param_fields = [f for f in fields if f.endswith("_param")]
    assert len(names) == len(param_fields)
    for type_name, prefix in names.items():
        assert fields[prefix + "_param"].message_type.name == type_name + "Parameter"
    assert names["Convolution"] == "convolution"
    assert names["Python"] == "python"
    assert names["Crop"] == "crop"
    # Message names that are not layer types map all the same, as in pycaffe.
    assert names["Transformation"] == "transform"
    assert names["Loss"] == "loss"
    # fcnwild's own layer parameters.
    assert names["SegmentationData"] == "segmentation_data"
    assert names["ConstrainedMIL"] == "constrained_mil"


def test_fcnwild_layer_keywords_land_in_their_param_messages():
    n = NetSpec()
    n.data, n.label = L.SegmentationData(source="synthetic:/tmp/x", batch_size=2,
                                         mean=[1.0, 2.0, 3.0], ntop=2)
    n.loss = L.ConstrainedMILLoss(n.data, n.label, class_stats="stats.npz", lower_slack=3)
    data, loss = n.to_proto().layer
    assert data.segmentation_data_param.source == "synthetic:/tmp/x"
    assert data.segmentation_data_param.batch_size == 2
    assert list(data.segmentation_data_param.mean) == [1.0, 2.0, 3.0]
    assert loss.constrained_mil_param.class_stats == "stats.npz"
    assert loss.constrained_mil_param.lower_slack == 3


def test_unnamed_tops_are_auto_named_by_type_and_count():
    data = L.DummyData(shape=dict(dim=[1, 1, 4, 4]))
    conv = L.Convolution(data, kernel_size=1, num_output=2)
    relu = L.ReLU(conv, in_place=True)
    second = L.Convolution(relu, kernel_size=1, num_output=2, weight_filler=dict(type="xavier"))
    net = second.to_proto()
    assert [(l.name, list(l.bottom), list(l.top)) for l in net.layer] == [
        ("DummyData1", [], ["DummyData1"]),
        ("Convolution1", ["DummyData1"], ["Convolution1"]),
        ("ReLU1", ["Convolution1"], ["Convolution1"]),
        ("Convolution2", ["Convolution1"], ["Convolution2"])]
    # A single dict for a repeated message field is a one-element list.
    assert [list(s.dim) for s in net.layer[0].dummy_data_param.shape] == [[1, 1, 4, 4]]
    assert net.layer[3].convolution_param.weight_filler.type == "xavier"
    # Each call of to_proto numbers afresh; to_proto of several tops shares the layers.
    assert [l.name for l in to_proto(second, conv).layer] == [l.name for l in net.layer]


def test_layer_level_keywords_repeated_fields_and_name_override():
    n = NetSpec()
    n.data, n.extra = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    n.ip = L.InnerProduct(n.data, num_output=3, name="fc_custom", loss_weight=2,
                          propagate_down=[True], include=dict(phase=caffe_pb2.TEST),
                          exclude=[dict(stage="a"), dict(stage="b")])
    text = str(n.to_proto())
    assert text == """layer {
  name: "data"
  type: "Input"
  top: "data"
  top: "extra"
  input_param {
    shape {
      dim: 2
      dim: 3
    }
    shape {
      dim: 2
    }
  }
}
layer {
  name: "fc_custom"
  type: "InnerProduct"
  bottom: "data"
  top: "ip"
  loss_weight: 2
  include {
    phase: TEST
  }
  exclude {
    stage: "a"
  }
  exclude {
    stage: "b"
  }
  propagate_down: true
  inner_product_param {
    num_output: 3
  }
}
"""


def test_zero_tops_returns_the_layer_and_names_it():
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=[dict(dim=[3]), dict(dim=[4, 2])], ntop=2)
    n.silence = L.Silence(n.data, n.data2, ntop=0)
    assert isinstance(n.silence, Function)
    silence = n.to_proto().layer[1]
    assert (silence.name, list(silence.bottom), list(silence.top)) == \
        ("silence", ["data", "data2"], [])


def test_multiple_tops_come_back_as_a_tuple_of_tops():
    tops = L.Slice(L.DummyData(shape=dict(dim=[4, 2])), ntop=3, slice_param=dict(axis=0))
    assert isinstance(tops, tuple) and len(tops) == 3
    assert all(isinstance(t, Top) and t.fn is tops[0].fn for t in tops)
    assert [t.n for t in tops] == [0, 1, 2]


def test_params_gives_enum_constants():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == 1
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    with pytest.raises(AttributeError):
        _ = P.Pooling.NOT_A_METHOD


def test_netspec_mapping_interface():
    n = NetSpec()
    n["data"] = L.DummyData(shape=dict(dim=[1]))
    n.relu = L.ReLU(n["data"])
    assert n.keys() == ["data", "relu"]
    assert n.vals() == [n.data, n.relu]
    del n["relu"]
    assert n.keys() == ["data"]
    # pycaffe raises KeyError for an unknown name; hasattr and pickle keep working.
    with pytest.raises(KeyError):
        _ = n.missing
    assert not hasattr(n, "missing")
    assert [l.name for l in pickle.loads(pickle.dumps(n)).to_proto().layer] == ["data"]


def test_inputs_must_be_tops():
    with pytest.raises(TypeError, match="Convolution input 0 is not a Top"):
        L.Convolution("data", kernel_size=3)


def test_unknown_keyword_names_the_field():
    with pytest.raises(AttributeError, match="num_outptu"):
        L.Convolution(L.DummyData(shape=dict(dim=[1])), num_outptu=3).to_proto()
    # Deconvolution has no DeconvolutionParameter: as in pycaffe its settings must be
    # given as convolution_param.
    with pytest.raises(AttributeError, match="Deconvolution layer 'Deconvolution1'"):
        L.Deconvolution(L.DummyData(shape=dict(dim=[1])), num_output=3).to_proto()


def test_generated_net_parses_back_identically():
    proto = mini_fcn("train").to_proto()
    assert text_format.Parse(str(proto), caffe_pb2.NetParameter()) == proto
