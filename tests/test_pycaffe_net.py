"""fcnwild.caffe.Net as pycaffe users use it: views, forward/backward, batching, weights."""
from __future__ import annotations

import gc
import logging
from collections import OrderedDict

import h5py
import numpy as np
import pytest

import fcnwild.caffe as caffe
from fcnwild.base.errors import NetError, WeightsError
from fcnwild.nets.weights import read_weights
from pycaffe_cases import IP_NET, ip_expected
from solver_cases import write


@pytest.fixture
def net_file(tmp_path):
    return write(tmp_path / "ipnet.prototxt", IP_NET)


@pytest.fixture
def net(net_file):
    return caffe.Net(str(net_file), caffe.TEST)


def _input(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, 3, 2, 2).astype(np.float32)


# --- construction and structure ------------------------------------------------------------
def test_the_three_constructor_forms_load_the_same_weights(net, net_file, tmp_path, caplog):
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    legacy_caplog = caplog.at_level(logging.WARNING, logger="fcnwild.caffe")
    with legacy_caplog:
        legacy = caffe.Net(str(net_file), str(weights), caffe.TEST)
    assert "DEPRECATION WARNING" in caplog.text
    named = caffe.Net(str(net_file), caffe.TEST, weights=str(weights))
    keyword = caffe.Net(network_file=str(net_file), phase=caffe.TEST, weights=str(weights))
    for other in (legacy, named, keyword):
        np.testing.assert_array_equal(other.params["ip"][0].data, net.params["ip"][0].data)


def test_constructor_errors(net_file, tmp_path):
    with pytest.raises(TypeError, match="phase"):
        caffe.Net(str(net_file))
    with pytest.raises(NetError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    with pytest.raises(WeightsError, match="Could not open file"):
        caffe.Net(str(net_file), caffe.TEST, weights=str(tmp_path / "missing.caffemodel"))
    with pytest.raises(TypeError, match="unexpected keyword"):
        caffe.Net(str(net_file), caffe.TEST, weight="x")


def test_level_and_stages_select_layers(tmp_path):
    text = IP_NET + """
layer { name: "staged" type: "Power" bottom: "zeta" top: "staged" include { stage: "extra" } }
layer { name: "leveled" type: "Power" bottom: "zeta" top: "leveled" include { min_level: 2 } }
"""
    path = str(write(tmp_path / "staged.prototxt", text))
    plain = caffe.Net(path, caffe.TEST)
    chosen = caffe.Net(path, caffe.TEST, level=2, stages=["extra"])
    assert "staged" not in plain.layer_dict and "leveled" not in plain.layer_dict
    assert {"staged", "leveled"} <= set(chosen.layer_dict)


def test_structure_is_pycaffes(net):
    assert isinstance(net.blobs, OrderedDict) and isinstance(net.params, OrderedDict)
    # "data" feeds two layers: Caffe's split layer and its blobs are part of the net.
    assert list(net.blobs) == net._blob_names == [
        "data", "data_data_0_split_0", "data_data_0_split_1", "ip", "zeta", "alpha"]
    assert net._layer_names == ["data", "data_data_0_split", "ip", "relu", "zeta", "beta"]
    assert [layer.type for layer in net.layers] == ["Input", "Split", "InnerProduct", "ReLU",
                                                    "Power", "Power"]
    assert list(net.layer_dict) == net._layer_names and net.layer_dict["ip"] is net.layers[2]
    assert list(net.params) == ["ip"] and net.params["ip"] is net.layers[2].blobs
    assert [p.shape for p in net.params["ip"]] == [(4, 12), (4,)]
    assert net.inputs == ["data"]
    assert net.outputs == ["alpha", "zeta"]          # sorted by name, as Caffe's std::set
    assert net._inputs == [0] and net._outputs == [5, 4]
    assert net.top_names == OrderedDict([
        ("data", ["data"]), ("data_data_0_split", ["data_data_0_split_0",
                                                   "data_data_0_split_1"]),
        ("ip", ["ip"]), ("relu", ["ip"]), ("zeta", ["zeta"]), ("beta", ["alpha"])])
    assert net.bottom_names["beta"] == ["ip"] and net.bottom_names["data"] == []
    assert net._top_ids(5) == [5] and net._bottom_ids(3) == [3]
    assert net._blobs[3] is net.blobs["ip"]
    assert net.blob_loss_weights == OrderedDict((name, 0.0) for name in net._blob_names)


def test_blob_shape_accessors_and_reshape(net):
    data = net.blobs["data"]
    assert data.shape == (2, 3, 2, 2) and data.count == 24
    assert (data.num, data.channels, data.height, data.width) == (2, 3, 2, 2)
    assert (net.params["ip"][1].num, net.params["ip"][1].channels) == (4, 1)
    data.reshape(5, 3, 2, 2)
    net.reshape()
    assert net.blobs["ip"].shape == (5, 4) and net.blobs["data"].data.shape == (5, 3, 2, 2)
    x = _input(5)
    out = net.forward(data=x)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    np.testing.assert_allclose(out["alpha"], ip_expected(x, w, b) + 1, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="takes no kwargs"):
        data.reshape(1, 3, 2, 2, axis=0)
    with pytest.raises(NotImplementedError, match="learnable blob"):
        net.params["ip"][0].reshape(2, 2)


# --- views ---------------------------------------------------------------------------------
def test_writes_through_data_views_take_effect_at_the_next_forward(net):
    x = _input()
    net.blobs["data"].data[...] = x
    weight = np.arange(48, dtype=np.float32).reshape(4, 12) / 48 - 0.5
    net.params["ip"][0].data[...] = weight
    net.params["ip"][1].data.flat = [0.5, -0.5, 1.0, 0.0]
    net.forward()
    np.testing.assert_allclose(net.blobs["ip"].data,
                               ip_expected(x, weight, np.array([0.5, -0.5, 1.0, 0.0])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.blobs["zeta"].data, 2 * x)


def test_views_held_across_forwards_see_the_new_values(net):
    data, ip = net.blobs["data"].data, net.blobs["ip"].data     # taken before any forward
    first = net.forward(data=_input(seed=1))["alpha"]
    for seed in (2, 3):
        x = _input(seed=seed)
        data[...] = x
        second = net.forward()["alpha"]
        w, b = net.params["ip"][0].data, net.params["ip"][1].data
        np.testing.assert_allclose(ip, ip_expected(x, w, b), rtol=1e-5, atol=1e-6)
    # As in pycaffe, forward() returns views: both results are the blob's memory.
    assert np.shares_memory(first, second) and np.array_equal(first, second)
    assert np.shares_memory(net.blobs["ip"].data, net.blobs["ip"].data)


def test_arrays_stay_valid_after_the_net_is_deleted(net):
    out = net.forward(data=_input())
    weight = net.params["ip"][0].data
    expected_out, expected_weight = out["zeta"].copy(), weight.copy()
    del net, out["alpha"]
    gc.collect()
    np.testing.assert_array_equal(out["zeta"], expected_out)
    np.testing.assert_array_equal(weight, expected_weight)
    weight[...] = 1                                   # still writable memory


def test_blob_data_is_read_only_as_an_attribute(net):
    with pytest.raises(AttributeError):
        net.blobs["data"].data = _input()


# --- forward and backward ------------------------------------------------------------------
def test_forward_checks_inputs_as_pycaffe(net):
    with pytest.raises(NetError, match="Input blob arguments do not match net inputs"):
        net.forward(ip=np.zeros((2, 4), np.float32))
    with pytest.raises(NetError, match="Input is not batch sized"):
        net.forward(data=_input(3))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        net.forward(start="nope")


def test_forward_returns_outputs_plus_blobs_and_honours_start_end(net):
    x = _input()
    out = net.forward(blobs=["ip"], data=x)
    assert set(out) == {"alpha", "zeta", "ip"}
    net.blobs["zeta"].data[...] = 0
    partial = net.forward(end="ip")                     # runs data, ip only
    assert set(partial) == {"ip"}
    np.testing.assert_array_equal(net.blobs["zeta"].data, 0)
    net.blobs["ip"].data[...] = 7                       # inject and run from "beta" on
    tail = net.forward(start="beta")
    np.testing.assert_array_equal(tail["alpha"], 8)
    assert net._forward(0, len(net.layers) - 1) == 0.0  # no loss layer
    with pytest.raises(IndexError):
        net._forward(0, len(net.layers))


def test_backward_sets_top_diffs_and_returns_input_diffs(net):
    x = _input()
    net.forward(data=x)
    w = net.params["ip"][0].data.astype(np.float64)
    pre = x.reshape(2, -1) @ w.T + net.params["ip"][1].data
    d_alpha = np.random.RandomState(5).randn(2, 4).astype(np.float32)
    d_zeta = np.ones((2, 3, 2, 2), np.float32)
    grads = net.backward(diffs=["ip"], alpha=d_alpha, zeta=d_zeta)
    assert set(grads) == {"data", "ip"}
    expected = ((d_alpha * (pre > 0)) @ w).reshape(x.shape) + 2 * d_zeta
    np.testing.assert_allclose(grads["data"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["ip"][0].diff,
                               (d_alpha * (pre > 0)).T @ x.reshape(2, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(NetError, match="Top diff arguments do not match net outputs"):
        net.backward(alpha=d_alpha)
    with pytest.raises(NetError, match="Diff is not batch sized"):
        net.backward(alpha=d_alpha[:1], zeta=d_zeta)


def test_backward_with_end_returns_that_layers_bottom_diffs(net):
    net.forward(data=_input())
    grads = net.backward(start="beta", end="beta")
    assert set(grads) == {"ip"}
    np.testing.assert_array_equal(grads["ip"], net.blobs["alpha"].diff)


def test_backward_needs_no_forward_before_it_as_in_caffe(net):
    """Caffe's Backward reads the blobs as they are: a layer's diffs from the current
    bottom data and top diff, whether or not a forward ran; repeated, param diffs add up."""
    d_alpha = np.random.RandomState(6).randn(2, 4).astype(np.float32)
    net.blobs["alpha"].diff[...] = d_alpha
    net.blobs["ip"].data[...] = 1.0                 # no forward has run at all
    grads = net.backward(start="beta", end="beta")
    np.testing.assert_allclose(grads["ip"], d_alpha, rtol=1e-6)
    x = _input()
    net.forward(data=x)
    net.blobs["ip"].diff[...] = d_alpha
    net.clear_param_diffs()
    net.backward(start="ip", end="ip")
    first = net.params["ip"][0].diff.copy()
    np.testing.assert_allclose(first, d_alpha.T @ x.reshape(2, -1), rtol=1e-5, atol=1e-6)
    net.blobs["ip"].diff[...] = d_alpha
    net.backward(start="ip", end="ip")
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * first, rtol=1e-5, atol=1e-6)


def test_clear_param_diffs_zeroes_held_diff_views(net):
    net.forward(data=_input())
    net.backward(alpha=np.ones((2, 4), np.float32), zeta=np.ones((2, 3, 2, 2), np.float32))
    diff = net.params["ip"][0].diff
    assert np.abs(diff).sum() > 0
    net.clear_param_diffs()
    assert not diff.any()


def test_layer_callbacks_run_around_each_layer(net):
    calls = []
    net.before_forward(lambda i: calls.append(("before", i)))
    net.after_forward(lambda i: calls.append(("after", i)))
    net.forward(data=_input())
    assert calls == [(kind, i) for i in range(6) for kind in ("before", "after")]
    backward_calls = []
    net.after_backward(backward_calls.append)
    net.backward(alpha=np.ones((2, 4), np.float32), zeta=np.ones((2, 3, 2, 2), np.float32))
    assert backward_calls == [5, 4, 3, 2, 1, 0]


# --- batches -------------------------------------------------------------------------------
def test_forward_all_batches_and_drops_the_padding(net):
    x = _input(5, seed=7)
    outs = net.forward_all(blobs=["ip"], data=x)
    assert set(outs) == {"alpha", "zeta", "ip"}
    assert outs["ip"].shape == (5, 4) and outs["zeta"].shape == (5, 3, 2, 2)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    np.testing.assert_allclose(outs["ip"], ip_expected(x, w, b), rtol=1e-5, atol=1e-6)
    # The last batch held one real item and one zero row (whose ip is relu(b)).
    np.testing.assert_allclose(net.blobs["ip"].data[1], np.maximum(b, 0), rtol=1e-6)


def test_batch_pads_the_last_batch_with_zeros(net):
    x = _input(5)
    batches = list(net._batch({"data": x}))
    assert [b["data"].shape[0] for b in batches] == [2, 2, 2]
    np.testing.assert_array_equal(batches[2]["data"][0], x[4])
    assert not batches[2]["data"][1].any()


def test_forward_backward_all(net):
    x = _input(3, seed=4)
    d_alpha = np.ones((3, 4), np.float32)
    d_zeta = np.zeros((3, 3, 2, 2), np.float32)
    outs, diffs = net.forward_backward_all(data=x, alpha=d_alpha, zeta=d_zeta)
    assert outs["alpha"].shape == (3, 4) and diffs["data"].shape == (3, 3, 2, 2)
    w = net.params["ip"][0].data.astype(np.float64)
    pre = x.reshape(3, -1) @ w.T + net.params["ip"][1].data
    np.testing.assert_allclose(diffs["data"], ((pre > 0) @ w).reshape(x.shape),
                               rtol=1e-5, atol=1e-5)


# --- weights -------------------------------------------------------------------------------
def test_save_writes_a_caffemodel_and_save_hdf5_hdf5_whatever_the_name(net, net_file, tmp_path):
    net.params["ip"][0].data[...] = 0.25
    binary, hdf5 = tmp_path / "looks.h5", tmp_path / "weights.bin"
    net.save(str(binary))
    net.save_hdf5(str(hdf5))
    assert not h5py.is_hdf5(binary) and h5py.is_hdf5(hdf5)
    assert np.all(read_weights(hdf5.rename(tmp_path / "w.h5"))["ip"][0] == 0.25)
    (tmp_path / "w.h5").rename(hdf5)
    for load in ("copy_from", "load_hdf5"):
        other = caffe.Net(str(net_file), caffe.TEST)
        getattr(other, load)(str(hdf5))
        np.testing.assert_array_equal(other.params["ip"][0].data, 0.25)
    other = caffe.Net(str(net_file), caffe.TEST)
    other.copy_from(str(binary))
    np.testing.assert_array_equal(other.params["ip"][1].data, net.params["ip"][1].data)
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        other.load_hdf5(str(binary))


def test_share_with_uses_the_other_nets_weights(net, net_file):
    other = caffe.Net(str(net_file), caffe.TEST)
    held = other.params["ip"][0]
    other.share_with(net)
    net.params["ip"][0].data[...] = 3.0
    assert np.shares_memory(held.data, net.params["ip"][0].data)
    x = _input()
    np.testing.assert_array_equal(other.forward(data=x)["alpha"], net.forward(data=x)["alpha"])


# --- layers --------------------------------------------------------------------------------
def test_layer_view_reshape_and_unsupported_calls(net):
    ip = net.layer_dict["ip"]
    net.blobs["data"].reshape(3, 3, 2, 2)
    ip.reshape([net.blobs["data"]], [net.blobs["ip"]])
    assert net.blobs["ip"].shape == (3, 4)
    with pytest.raises(NotImplementedError, match="Layer.setup"):
        ip.setup([net.blobs["data"]], [net.blobs["ip"]])
    with pytest.raises(NotImplementedError, match="add_blob"):
        ip.blobs.add_blob(1, 2)


def test_set_input_arrays_needs_a_memory_data_layer_first(net):
    with pytest.raises(NetError, match="first layer is a MemoryDataLayer"):
        net.set_input_arrays(np.zeros((2, 3, 2, 2), np.float32), np.zeros(2, np.float32))


MEMORY_NET = """name: "memory"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 2 width: 2 } }
layer { name: "scaled" type: "Power" bottom: "data" top: "scaled" power_param { scale: 3 } }
"""


def test_set_input_arrays_feeds_the_memory_data_layer(tmp_path):
    net = caffe.Net(str(write(tmp_path / "memory.prototxt", MEMORY_NET)), caffe.TEST)
    data = np.arange(48, dtype=np.float32).reshape(4, 3, 2, 2)
    labels = np.array([5, 6, 7, 8], dtype=np.float32)
    net.set_input_arrays(data, labels)                 # 1-d labels get their unit axes
    for batch in (slice(0, 2), slice(2, 4), slice(0, 2)):
        out = net.forward()
        np.testing.assert_array_equal(out["scaled"], 3 * data[batch])
        np.testing.assert_array_equal(net.blobs["label"].data.reshape(-1), labels[batch])
    data[2] = -1                                       # used in place, not copied, as Caffe
    np.testing.assert_array_equal(net.forward()["scaled"][0], -3)
    with pytest.raises(NetError, match="multiple of batch_size"):
        net.set_input_arrays(data[:3].copy(), labels[:3].copy())
    with pytest.raises(NetError, match="float32"):
        net.set_input_arrays(data.astype(np.float64), labels)
