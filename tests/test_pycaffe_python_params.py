"""Learnable blobs of Python layers (``self.blobs.add_blob`` in setup) and exceptions raised
by a Python layer's own code, through fcnwild.caffe as pycaffe scripts use them."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fcnwild.caffe as caffe
from fcnwild.layers import blob_views
from fcnwild.nets.weights import read_weights
from solver_cases import write

# "gain" multiplies its bottom by a learnable scalar g (param_str: its first value).
# Its backward adds to the param diff (Caffe's layers accumulate; the solver clears the
# diffs before each iteration). "bias_source" has no bottom and one learnable blob that
# its forward never reads: only its own backward gives that blob a diff.
LAYERS = '''
import numpy as np
import caffe


class Gain(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class Source(caffe.Layer):
    """No bottom; its learnable blob gets a diff of 7 from backward alone."""
    def setup(self, bottom, top):
        self.blobs.add_blob(2, 3)
        self.blobs[0].reshape(3)

    def reshape(self, bottom, top):
        top[0].reshape(2, 3)

    def forward(self, bottom, top):
        top[0].data[...] = 1.0

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] = 7.0


class Failing(caffe.Layer):
    """Raises from the method named by param_str."""
    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise RuntimeError("setup went wrong")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.param_str == "forward":
            raise KeyError("no such key")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        raise ValueError("backward went wrong")


class LateBlob(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.blobs.add_blob(1)
'''

# x (4 x 3, ones) -> gain (g = 0.5) -> Euclidean loss against y (threes).
GAIN_NET = '''name: "gain"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 3 } } }
layer { name: "gain" type: "Python" bottom: "x" top: "gx"
  python_param { module: "py_params" layer: "Gain" param_str: "0.5" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "gx" bottom: "y" top: "loss" }
'''

SOURCE_NET = '''name: "source"
layer { name: "src" type: "Python" top: "s"
  python_param { module: "py_params" layer: "Source" } }
layer { name: "target" type: "DummyData" top: "t" dummy_data_param { shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }
'''


def failing_net(method: str) -> str:
    return f'''name: "failing" force_backward: true
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 2 }} }} }}
layer {{ name: "boom" type: "Python" bottom: "x" top: "y"
  python_param {{ module: "py_params" layer: "Failing" param_str: "{method}" }} }}
'''


def gain_gradient(g: float) -> float:
    """d loss / d g for GAIN_NET: loss = sum((g x - y)^2) / (2 num), x = 1, y = 3, num = 4,
    12 elements."""
    return 12 * (g - 3.0) / 4


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The layer module beside the nets, loaded fresh; ``import caffe`` in it is
    fcnwild.caffe."""
    write(tmp_path / "py_params.py", LAYERS)
    monkeypatch.setitem(sys.modules, "caffe", caffe)
    monkeypatch.delitem(sys.modules, "py_params", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_layer_blobs_are_the_nets_params_and_backward_writes_their_diff(folder):
    net = caffe.Net(str(write(folder / "gain.prototxt", GAIN_NET)), caffe.TRAIN)
    layer = net.layer_dict["gain"]
    assert list(net.params) == ["gain"] and len(layer.blobs) == 1
    assert layer.blobs[0].shape == (1,) and layer.blobs[0].data[0] == 0.5
    param = net._net.layers[list(net._layer_names).index("gain")].blobs[0]
    assert np.shares_memory(net.params["gain"][0].data, param.detach().numpy())
    net.forward()
    np.testing.assert_allclose(net.blobs["gx"].data, 0.5)
    net.backward()
    np.testing.assert_allclose(layer.blobs[0].diff, [gain_gradient(0.5)], rtol=1e-6)
    np.testing.assert_allclose(net.params["gain"][0].diff, [gain_gradient(0.5)], rtol=1e-6)
    net.clear_param_diffs()
    assert net.params["gain"][0].diff[0] == 0


@pytest.mark.parametrize("host_copies", [False, True], ids=["cpu-views", "host-copies"])
def test_the_solver_learns_a_python_layers_blob(folder, monkeypatch, host_copies):
    """Each iteration starts from cleared diffs (Gain's backward adds to its diff), and
    the update is plain SGD. With host copies (how CUDA tensors are seen) the diffs the
    layer writes still reach the update."""
    if host_copies:
        monkeypatch.setattr(blob_views, "_VIEWABLE", set())
    write(folder / "gain.prototxt", GAIN_NET)
    solver_file = write(folder / "solver.prototxt",
                        'net: "gain.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 10 '
                        'display: 0 snapshot_after_train: false')
    solver = caffe.SGDSolver(str(solver_file))
    g = 0.5
    for _ in range(3):
        solver.step(1)
        g -= 0.1 * gain_gradient(g)
        np.testing.assert_allclose(solver.net.params["gain"][0].data, [g], rtol=1e-6)
    np.testing.assert_allclose(solver.net.layer_dict["gain"].blobs[0].data, [g], rtol=1e-6)


def test_a_blob_the_forward_never_reads_gets_its_diff_from_backward(folder):
    net = caffe.Net(str(write(folder / "source.prototxt", SOURCE_NET)), caffe.TRAIN)
    blob = net.params["src"][0]
    assert blob.shape == (3,)                       # reshaped in setup
    net.forward()
    net.backward()
    np.testing.assert_array_equal(blob.diff, 7.0)


def test_save_copy_from_and_share_with_carry_python_layer_blobs(folder):
    path = str(write(folder / "gain.prototxt", GAIN_NET))
    net = caffe.Net(path, caffe.TRAIN)
    net.params["gain"][0].data[...] = 2.5
    net.save(str(folder / "gain.caffemodel"))
    stored = read_weights(folder / "gain.caffemodel")
    np.testing.assert_array_equal(np.array(stored["gain"][0]), [2.5])
    net.params["gain"][0].data[...] = -1.0
    net.copy_from(str(folder / "gain.caffemodel"))
    assert net.layer_dict["gain"].blobs[0].data[0] == 2.5
    other = caffe.Net(path, caffe.TEST, weights=str(folder / "gain.caffemodel"))
    assert other.params["gain"][0].data[0] == 2.5
    shared = caffe.Net(path, caffe.TEST)
    shared.share_with(net)
    net.params["gain"][0].data[...] = 4.0
    assert shared.layer_dict["gain"].blobs[0].data[0] == 4.0
    shared.forward()
    np.testing.assert_allclose(shared.blobs["gx"].data, 4.0)


def test_learnable_blobs_are_added_and_reshaped_only_in_setup(folder):
    net = write(folder / "late.prototxt", GAIN_NET.replace('"Gain"', '"LateBlob"'))
    with pytest.raises(NotImplementedError, match="add_blob in Python layer 'gain' outside "
                                                  "its setup"):
        caffe.Net(str(net), caffe.TRAIN).forward()
    built = caffe.Net(str(write(folder / "gain.prototxt", GAIN_NET)), caffe.TRAIN)
    with pytest.raises(NotImplementedError, match="reshape of learnable blob 0 of layer 'gain'"):
        built.params["gain"][0].reshape(2)
    with pytest.raises(NotImplementedError, match="built-in InnerProduct layer"):
        net = caffe.Net(str(write(folder / "ip.prototxt", GAIN_NET.replace(
            'type: "Python"', 'type: "InnerProduct" inner_product_param { num_output: 3 }')
            .replace('python_param { module: "py_params" layer: "Gain" param_str: "0.5" }',
                     ''))), caffe.TRAIN)
        net.layer_dict["gain"].blobs.add_blob(3)


@pytest.mark.parametrize("method, error, message", [
    ("setup", RuntimeError, "setup went wrong"),
    ("forward", KeyError, "no such key"),
    ("backward", ValueError, "backward went wrong"),
])
def test_a_python_layers_exception_keeps_its_type_and_names_the_layer(folder, method, error,
                                                                      message):
    path = str(write(folder / "failing.prototxt", failing_net(method)))
    with pytest.raises(error, match=message) as info:
        net = caffe.Net(path, caffe.TRAIN)
        net.forward()
        net.backward()
    assert info.value.__notes__ == [
        f"raised by {method}() of Python layer 'boom' (py_params.Failing) of {path}"]
