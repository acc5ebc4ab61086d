"""The Net: assembly, in-place blobs, backward control, weight sharing, weights I/O."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError, WeightsError
from fcnwild.nets import weights
from fcnwild.nets.net import Net

CAFFE = Path(__file__).parent / "fixtures" / "caffe_reference"

SMALL = """
name: "small"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def build(text: str, **kwargs) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), **kwargs)


def feed(net: Net, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    net.set_input("data", rng.standard_normal(net.blobs["data"].shape).astype(np.float32))
    net.set_input("label", rng.integers(0, 3, net.blobs["label"].shape).astype(np.float32))


def test_inplace_relu_overwrites_its_blob_and_keeps_caffes_diff():
    net = build(SMALL, phase="train")
    feed(net)
    net.forward(end="conv1")
    before = net.blobs["conv1"].tensor
    pre = before.detach().clone()
    net.forward(start="relu1", end="relu1")
    assert net.blobs["conv1"].tensor.data_ptr() == before.data_ptr()   # same storage
    np.testing.assert_array_equal(net.blobs["conv1"].data, np.maximum(pre.numpy(), 0))
    net.forward(start="conv2")
    net.backward()
    # The blob's diff is w.r.t. the ReLU input: zero exactly where the input was negative.
    diff = net.blobs["conv1"].diff
    assert np.all(diff[pre.numpy() < 0] == 0) and np.any(diff != 0)
    assert np.all(net.blobs["data"].diff == 0)   # no force_backward: inputs get no diff


def test_loss_weight_defaults_and_total_loss():
    net = build(SMALL, phase="train")
    feed(net)
    assert net.loss_weights == {"loss": 1.0}
    out = net.forward()
    assert set(out) == {"loss"}
    weighted = build(SMALL.replace('top: "loss" }', 'top: "loss" loss_weight: 0.25 }'),
                     phase="train")
    weighted.load_state_dict(net.state_dict())
    feed(weighted)
    loss = weighted.forward_range(0, len(weighted.layers) - 1)
    assert loss == pytest.approx(0.25 * float(out["loss"]), rel=1e-6)
    # loss_weight scales gradients, not the loss blob's value.
    assert float(weighted.blobs["loss"].data) == pytest.approx(float(out["loss"]), rel=1e-6)


def test_param_diffs_accumulate_until_cleared():
    net = build(SMALL, phase="train")
    feed(net)
    net.forward_backward()
    once = net.params["conv1"][0].diff.copy()
    net.forward_backward()
    np.testing.assert_allclose(net.params["conv1"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["conv1"][0].diff.any()


def test_propagate_down_and_force_backward():
    # propagate_down: false stops the diff at that bottom, and nothing below it trains.
    stopped = build(SMALL.replace('bottom: "conv1" top: "score"',
                                  'bottom: "conv1" top: "score" propagate_down: false'),
                    phase="train")
    feed(stopped)
    stopped.forward_backward()
    assert not stopped.blobs["conv1"].diff.any()
    assert not stopped.params["conv1"][0].diff.any()
    assert stopped.params["conv2"][0].diff.any()
    # force_backward gives inputs a diff (Caffe: it also overrides propagate_down).
    plain = build(SMALL, phase="train")
    forced = build("force_backward: true\n" + SMALL, phase="train")
    forced.load_state_dict(plain.state_dict())
    for net in (plain, forced):
        feed(net)
        net.forward_backward()
    assert not plain.blobs["data"].diff.any() and forced.blobs["data"].diff.any()
    with pytest.raises(NetError, match="propagate_down"):
        build(SMALL.replace('top: "loss" }', 'top: "loss" propagate_down: true }'))


SHARED = """
layer { name: "input" type: "Input" top: "a" top: "b" top: "t"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } shape { dim: 1 dim: 2 dim: 4 dim: 4 }
                      shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
layer { name: "ca" type: "Convolution" bottom: "a" top: "fa" param { name: "w" lr_mult: 1 }
        param { name: "bias" } convolution_param { num_output: 3 kernel_size: 3
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "cb" type: "Convolution" bottom: "b" top: "fb" param { name: "w" }
        param { name: "bias" } convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "fa" bottom: "fb" top: "s" }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }
"""


def test_weight_sharing_by_param_name():
    net = build(SHARED, phase="train")
    assert net.layer_dict["ca"].blobs[0] is net.layer_dict["cb"].blobs[0]
    assert len(net.learnable_params) == 2
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 1, 2, 4, 4)).astype(np.float32)
    net.forward(a=a, b=b)
    # Both branches' gradients land in the one shared diff.
    net.backward(end="sum")
    net.clear_param_diffs()
    net.forward(a=a, b=b)
    net.blobs["s"].diff = rng.standard_normal(net.blobs["s"].shape).astype(np.float32)
    top = torch.from_numpy(net.blobs["s"].diff.copy())
    net.backward(start="sum")
    w = net.layer_dict["ca"].blobs[0].detach().clone().requires_grad_()
    expected = torch.autograd.grad(
        (torch.nn.functional.conv2d(torch.from_numpy(a), w) +
         torch.nn.functional.conv2d(torch.from_numpy(b), w)).mul(top).sum(), w)[0]
    np.testing.assert_allclose(net.params["ca"][0].diff, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_sharing_errors():
    # Input b with one channel: cb's weights would be (3, 1, 3, 3), ca's are (3, 2, 3, 3).
    bad_shape = SHARED.replace("} shape { dim: 1 dim: 2 dim: 4 dim: 4 }",
                               "} shape { dim: 1 dim: 1 dim: 4 dim: 4 }")
    assert bad_shape != SHARED
    with pytest.raises(NetError, match="cannot share param 'w'"):
        build(bad_shape)
    bad_lr = SHARED.replace('top: "fb" param { name: "w" }', 'top: "fb" param { name: "w" '
                            'lr_mult: 2 }')
    with pytest.raises(NetError, match="mismatched lr_mult"):
        build(bad_lr)


@pytest.mark.parametrize("text, message", [
    ('layer { name: "x" type: "NoSuchLayer" }', "unknown layer type 'NoSuchLayer'"),
    ('layer { name: "r" type: "ReLU" bottom: "missing" top: "y" }', "unknown bottom blob"),
    ('layer { name: "i" type: "Input" top: "a" input_param { shape { dim: 1 } } }\n'
     'layer { name: "r" type: "ReLU" bottom: "a" top: "b" }\n'
     'layer { name: "s" type: "ReLU" bottom: "a" top: "b" }', "produced by more than one"),
    ('layer { name: "p" type: "Python" python_param { module: "os" layer: "system" } }',
     "allow_python"),
])
def test_build_errors_name_the_layer(text, message):
    with pytest.raises(NetError, match=message) as err:
        build(text)
    assert err.value.layer is not None


def test_copy_from_matches_by_name_and_checks_shapes(tmp_path):
    source = build(SMALL, phase="train")
    path = tmp_path / "w.caffemodel"
    source.save(path)
    target = build(SMALL.replace('name: "small"', 'name: "other"'), phase="train")
    target.copy_from(path)
    np.testing.assert_array_equal(target.params["conv1"][0].data, source.params["conv1"][0].data)
    # Unknown layers in the file are ignored; a shape mismatch names layer and shapes.
    renamed = build(SMALL.replace('"conv2"', '"conv9"').replace("num_output: 4",
                                                                "num_output: 5"))
    with pytest.raises(WeightsError) as err:
        renamed.copy_from(path)
    assert err.value.layer == "conv1" and "(4, 3, 3, 3)" in str(err.value) \
        and "(5, 3, 3, 3)" in str(err.value)
    no_bias = build(SMALL.replace("num_output: 3 kernel_size: 1",
                                  "num_output: 3 kernel_size: 1 bias_term: false"))
    with pytest.raises(WeightsError, match="number of blobs"):
        no_bias.copy_from(path)


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5", ".pt"])
def test_save_and_reload_in_each_format(tmp_path, suffix):
    net = build(SHARED, phase="train")
    path = tmp_path / f"w{suffix}"
    net.save(path)
    other = build(SHARED, phase="train")
    other.copy_from(path)
    for name, blobs in net.params.items():
        for ours, theirs in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(ours.data, theirs.data)
    if suffix == ".caffemodel.h5":
        stored = weights.read_weights(path)
        assert stored["cb"] == []          # shared params live under their owner only


def test_caffemodel_round_trip_through_the_net_is_byte_identical(tmp_path):
    case = CAFFE / "dilation_frontend_small"
    net = Net(case / "net.prototxt", weights=case / "weights.caffemodel", phase="train")
    out = tmp_path / "again.caffemodel"
    net.save(out)
    before, after = weights.read_weights(case / "weights.caffemodel"), weights.read_weights(out)
    assert before.keys() == after.keys()
    for name in before:
        for a, b in zip(before[name], after[name]):
            assert a.tobytes() == b.tobytes()


def test_float64_and_device_moves_keep_working():
    net = build(SMALL, phase="train").double()
    feed(net)
    assert net.blobs["data"].tensor.dtype == torch.float64
    loss = net.forward_backward()
    assert np.isfinite(loss) and net.params["conv1"][0].diff.dtype == np.float64
