"""Python layers through fcnwild.caffe: caffe.Layer subclasses load without an opt-in,
``net.layers`` gives the user's own layer objects; the command line keeps its opt-in."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

import fcnwild.caffe as caffe
from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.python_layer import PythonLayerBase
from fcnwild.tools import test_cmd
from pycaffe_cases import PY_DATA_MODULE, PY_DATA_NET
from solver_cases import write


@pytest.fixture
def py_net_file(tmp_path, monkeypatch):
    """PY_DATA_NET beside its layer module; ``import caffe`` in that module is fcnwild.caffe."""
    write(tmp_path / "const_data.py", PY_DATA_MODULE)
    monkeypatch.setitem(sys.modules, "caffe", caffe)
    monkeypatch.delitem(sys.modules, "const_data", raising=False)
    return str(write(tmp_path / "net.prototxt", PY_DATA_NET))


def test_caffe_layer_is_the_base_class_the_python_layer_type_runs():
    assert caffe.Layer is PythonLayerBase


def test_python_layers_load_without_an_opt_in_and_are_the_users_objects(py_net_file):
    net = caffe.Net(py_net_file, caffe.TRAIN)
    data_layer, triple = net.layers[0], net.layer_dict["scale"]
    assert type(data_layer).__name__ == "ConstantData" and isinstance(data_layer, caffe.Layer)
    assert data_layer.type == "Python" and len(data_layer.blobs) == 0
    assert data_layer.param_str == "{'value': 2.0}" and data_layer.phase == caffe.TRAIN
    assert triple.phase == caffe.TRAIN and "data" not in net.params
    out = net.forward()
    assert data_layer.calls == 1                    # the net runs this very object
    np.testing.assert_array_equal(net.blobs["scaled"].data, 6.0)
    np.testing.assert_allclose(out["loss"], 0.5 * 18 * 25, rtol=1e-6)   # (6 - 1)^2 / 2 / num
    data_layer.value = -1.0                         # state set on the object reaches forward
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, -2.0)


def test_python_layer_backward_runs_through_caffe_net(py_net_file):
    # Nothing here learns: as in Caffe, only force_backward makes the net back-propagate.
    with open(py_net_file) as f:
        text = f.read()
    write(Path(py_net_file), "force_backward: true\n" + text)
    net = caffe.Net(py_net_file, caffe.TRAIN)
    net.forward()
    net.backward(diffs=["data"])
    # d loss / d scaled = (scaled - label) / num = 5, times 3 through Triple's backward.
    np.testing.assert_allclose(net.blobs["scaled"].diff, 5.0, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["data"].diff, 15.0, rtol=1e-6)


def test_command_line_keeps_the_explicit_opt_in(py_net_file, capsys):
    parser = argparse.ArgumentParser()
    test_cmd.add_arguments(parser)
    refused = parser.parse_args(["--model", py_net_file, "--iterations", "1", "--phase",
                                 "train"])
    with pytest.raises(NetError, match="--allow-python"):
        test_cmd.run(refused)
    allowed = parser.parse_args(["--model", py_net_file, "--iterations", "1", "--phase",
                                 "train", "--allow-python"])
    assert test_cmd.run(allowed) == 0


def test_the_base_class_names_what_a_layer_lacks():
    class Incomplete(caffe.Layer):
        def setup(self, bottom, top):
            pass

    layer = Incomplete(caffe_pb2.LayerParameter())
    with pytest.raises(NotImplementedError, match="Incomplete defines no reshape"):
        layer.reshape([], [])
    with pytest.raises(NotImplementedError, match="defines no backward"):
        layer.backward([], [], [])
    with pytest.raises(NotImplementedError, match="add_blob"):
        layer.blobs.add_blob(2, 3)


def test_a_layer_without_reshape_fails_at_build_with_a_note_naming_the_layer(tmp_path, monkeypatch):
    write(tmp_path / "noreshape.py", "import caffe\n\nclass NoReshape(caffe.Layer):\n"
                                     "    pass\n")
    monkeypatch.setitem(sys.modules, "caffe", caffe)
    net = write(tmp_path / "n.prototxt", 'layer { name: "p" type: "Python" top: "x" '
                                         'python_param { module: "noreshape" '
                                         'layer: "NoReshape" } }')
    with pytest.raises(NotImplementedError, match="NoReshape defines no reshape") as info:
        caffe.Net(str(net), caffe.TEST)
    assert info.value.__notes__ == [f"raised by reshape() of Python layer 'p' "
                                    f"(noreshape.NoReshape) of {net}"]
