"""fcnwild.caffe.draw: pycaffe's net graphs, checked through pydot's objects.

pydot is a test dependency; rendering needs Graphviz's dot, so only the
rendering test is skipped where dot is not installed.
"""
from __future__ import annotations

import importlib
import shutil
import sys

import pytest
from google.protobuf import text_format

from fcnwild.caffe import draw
from fcnwild.caffe.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "db" batch_size: 64 } include { phase: TRAIN } }
layer { name: "input" type: "Input" top: "data" top: "label" include { phase: TEST } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
        param { lr_mult: 1 } param { lr_mult: 2 } inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        exclude { phase: TEST } }
"""


@pytest.fixture
def net() -> caffe_pb2.NetParameter:
    return text_format.Parse(NET, caffe_pb2.NetParameter())


def graph_of(graph):
    nodes = {node.get_name(): node.get_attributes() for node in graph.get_nodes()}
    edges = {(e.get_source(), e.get_destination()): e.get_attributes()["label"]
             for e in graph.get_edges()}
    return nodes, edges


def test_graph_has_a_node_per_layer_and_blob_and_edges_through_layers(net):
    nodes, edges = graph_of(draw.get_pydot_graph(net, "LR"))
    conv = r'"conv1\n(Convolution)\nkernel size: 5\nstride: 2\npad: 1"'
    pool = r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"'
    data, relu, ip, loss = (r'"data\n(Data)"', r'"relu1\n(ReLU)"',
                            r'"ip\n(InnerProduct)"', r'"loss\n(SoftmaxWithLoss)"')
    assert nodes[conv]["fillcolor"] == "#FF5050"
    assert nodes[pool]["fillcolor"] == "#FF9900"
    assert nodes[ip]["fillcolor"] == "#CC33FF"
    assert nodes[data]["fillcolor"] == "#6495ED"
    assert nodes[relu] == draw.NEURON_LAYER_STYLE       # in place
    assert nodes["conv1"] == draw.BLOB_STYLE            # a blob read by a later layer
    assert nodes["loss"] == {}                          # a blob nobody reads
    assert len(nodes) == 7 + 6                          # layers + blobs
    assert edges[(data, "data")] == "Batch 64"
    assert edges[("data", conv)] == '""'
    assert edges[(conv, "conv1")] == "20"
    assert edges[("conv1", relu)] == '""' and edges[(relu, "conv1")] == '""'
    assert edges[(ip, "ip")] == "10"
    assert edges[("label", loss)] == '""'
    assert len(edges) == 15


def test_phase_keeps_the_layers_its_rules_admit(net):
    train_nodes, _ = graph_of(draw.get_pydot_graph(net, "TB", phase=caffe_pb2.TRAIN))
    test_nodes, _ = graph_of(draw.get_pydot_graph(net, "TB", phase=caffe_pb2.TEST))
    assert '"data (Data)"' in train_nodes and '"input (Input)"' not in train_nodes
    assert '"loss (SoftmaxWithLoss)"' in train_nodes
    assert '"input (Input)"' in test_nodes and '"data (Data)"' not in test_nodes
    assert '"loss (SoftmaxWithLoss)"' not in test_nodes
    net.layer[0].exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(ValueError, match="layer data has both include and exclude"):
        draw.get_pydot_graph(net, "TB", phase=caffe_pb2.TEST)


def test_labels_and_learning_rate_multipliers(net):
    conv, ip, relu = net.layer[2], net.layer[5], net.layer[3]
    assert draw.get_layer_label(conv, "TB") == \
        '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"'
    # Both multipliers 0: nothing to show.
    assert draw.get_layer_label(conv, "TB", display_lrm=True) == draw.get_layer_label(conv, "TB")
    assert draw.get_layer_label(ip, "BT", display_lrm=True) == \
        '"ip (InnerProduct) lr mult: 1.0, 2.0"'
    assert draw.get_layer_lr_mult(ip) == (1.0, 2.0)
    del ip.param[1]
    assert draw.get_layer_lr_mult(ip) == (1.0, 1.0)
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        draw.get_layer_lr_mult(relu)
    assert draw.choose_color_by_layertype("Deconvolution") == "#FF5050"
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert draw.get_pydot_graph(caffe_pb2.NetParameter(), "LR").get_name() == "Net"


def test_without_pydot_the_module_imports_and_drawing_names_what_to_install(monkeypatch, net):
    monkeypatch.setitem(sys.modules, "pydot", None)     # makes `import pydot` fail
    monkeypatch.delitem(sys.modules, "fcnwild.caffe.draw")
    fresh = importlib.import_module("fcnwild.caffe.draw")
    assert fresh.get_layer_label(net.layer[3], "LR") == r'"relu1\n(ReLU)"'
    for call in (lambda: fresh.get_pydot_graph(net, "LR"), lambda: fresh.draw_net(net, "LR")):
        with pytest.raises(ImportError, match=r"pip install pydot.*graphviz"):
            call()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_net_to_file_renders_with_graphviz(net, tmp_path):
    out = tmp_path / "net.png"
    draw.draw_net_to_file(net, str(out), "LR", phase=caffe_pb2.TRAIN, display_lrm=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
