"""Prototxt parsing, format upgrades, NetState filtering, implicit splits."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError, PrototxtError
from fcnwild.nets.netstate import filter_net, make_state
from fcnwild.nets.prototxt import read_net_param, read_solver_param, read_text
from fcnwild.nets.splits import insert_splits
from fcnwild.nets.upgrade import upgrade_net, upgrade_solver

FIXTURES = Path(__file__).parent / "fixtures"
CAFFE = FIXTURES / "caffe_reference"


def net_from_text(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def test_prototxt_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  typo_field: 3\n}\n')
    with pytest.raises(PrototxtError) as err:
        read_net_param(path)
    assert err.value.file == str(path)
    assert err.value.line == 4
    assert err.value.column is not None
    assert "typo_field" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_binary_garbage_files(tmp_path):
    with pytest.raises(PrototxtError, match="no such file"):
        read_net_param(tmp_path / "absent.prototxt")
    garbage = tmp_path / "junk.caffemodel"
    garbage.write_bytes(b"\xff\xff\xff\xff\x0f\x12")
    with pytest.raises(PrototxtError, match="corrupted or truncated"):
        read_net_param(garbage)


def test_v1_upgrade_matches_caffes_upgrade_tool():
    ours = read_net_param(CAFFE / "format_v1_layers" / "net.prototxt")
    caffe = read_text(CAFFE / "format_v1_layers" / "net_upgraded.prototxt",
                      caffe_pb2.NetParameter())
    assert ours == caffe


def test_v0_upgrade_folds_padding_layers_and_maps_fields():
    v0 = net_from_text("""
        name: "old" input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
        layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2
                         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
                 bottom: "pad1" top: "conv1" }
        layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
                 bottom: "conv1" top: "pool1" }
        layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 }
                 bottom: "pool1" top: "pool1" }
    """)
    net = upgrade_net(v0)
    types = [layer.type for layer in net.layer]
    assert types == ["Input", "Convolution", "Pooling", "Dropout"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]          # the padding layer is folded in
    assert list(conv.convolution_param.pad) == [2]
    assert list(conv.convolution_param.kernel_size) == [3]
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert [p.decay_mult for p in conv.param] == [1, 0]
    assert net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[3].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_field_on_wrong_layer_type_is_an_error():
    v0 = net_from_text("""
        input: "data"
        layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "data" top: "r" }
    """)
    with pytest.raises(PrototxtError, match="num_output"):
        upgrade_net(v0)


def test_legacy_input_fields_become_first_input_layer():
    net = upgrade_net(net_from_text("""
        input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 }
        layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }
    """))
    assert net.layer[0].type == "Input" and net.layer[0].name == "input"
    assert list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    assert not net.input and not net.input_shape
    with pytest.raises(PrototxtError, match="4 per input"):
        upgrade_net(net_from_text('input: "a" input_dim: 1 input_dim: 2'))


def test_old_batchnorm_param_specs_are_frozen():
    net = upgrade_net(net_from_text("""
        layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 }
                param { lr_mult: 1 decay_mult: 1 } }
    """))
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


def test_solver_type_enum_upgrade(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1 solver_type: NESTEROV')
    assert read_solver_param(path).type == "Nesterov"
    both = caffe_pb2.SolverParameter(type="SGD", solver_type=caffe_pb2.SolverParameter.ADAM)
    with pytest.raises(PrototxtError, match="only one"):
        upgrade_solver(both)


STATE_NET = """
    layer { name: "always" type: "Input" top: "x" }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } }
    layer { name: "test_only" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } }
    layer { name: "level2" type: "ReLU" bottom: "x" top: "x" include { min_level: 2 } }
    layer { name: "stage_a" type: "ReLU" bottom: "x" top: "x" include { stage: "a" } }
    layer { name: "not_b" type: "ReLU" bottom: "x" top: "x" include { not_stage: "b" } }
    layer { name: "excl_test" type: "ReLU" bottom: "x" top: "x" exclude { phase: TEST } }
    layer { name: "either" type: "ReLU" bottom: "x" top: "x"
            include { phase: TEST } include { stage: "a" } }
"""


@pytest.mark.parametrize("phase, level, stages, expected", [
    (caffe_pb2.TRAIN, 0, [], ["always", "train_only", "not_b", "excl_test"]),
    (caffe_pb2.TEST, 0, [], ["always", "test_only", "not_b", "either"]),
    (caffe_pb2.TEST, 3, ["a", "b"], ["always", "test_only", "level2", "stage_a", "either"]),
    (caffe_pb2.TRAIN, 2, ["a"], ["always", "train_only", "level2", "stage_a", "not_b",
                                 "excl_test", "either"]),
])
def test_netstate_filtering(phase, level, stages, expected):
    net = filter_net(net_from_text(STATE_NET), make_state(phase, level, stages))
    assert [layer.name for layer in net.layer] == expected


def test_include_and_exclude_together_is_an_error():
    net = net_from_text('layer { name: "x" type: "ReLU" include { phase: TRAIN } '
                        'exclude { phase: TEST } }')
    with pytest.raises(PrototxtError, match="either include rules or exclude rules"):
        filter_net(net, make_state(caffe_pb2.TRAIN))


def test_insert_splits_reproduces_caffes_layer_table():
    case = CAFFE / "split_implicit"
    import json
    meta = json.loads((case / "meta.json").read_text())
    net = insert_splits(read_net_param(case / "net.prototxt"))
    ours = [(l.name, l.type, list(l.bottom), list(l.top)) for l in net.layer]
    caffe = [(l["name"], l["type"], l["bottoms"], l["tops"]) for l in meta["layers"]]
    assert ours == caffe


def test_insert_splits_for_a_weighted_loss_top_that_is_also_consumed():
    net = insert_splits(net_from_text("""
        layer { name: "in" type: "Input" top: "x" }
        layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "loss"
                loss_weight: 2 }
        layer { name: "use" type: "ReLU" bottom: "loss" top: "y" }
    """))
    split = [l for l in net.layer if l.type == "Split" and l.bottom[0] == "loss"][0]
    assert list(split.top) == ["loss_l_0_split_0", "loss_l_0_split_1"]
    assert list(split.loss_weight) == [2, 0]
    assert list(next(l for l in net.layer if l.name == "l").loss_weight) == []
    assert [l.bottom[0] for l in net.layer if l.name == "use"] == ["loss_l_0_split_1"]


def test_unknown_bottom_is_an_error_naming_the_layer():
    with pytest.raises(NetError) as err:
        insert_splits(net_from_text('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }'))
    assert err.value.layer == "r" and "nope" in str(err.value)
