"""A train step reuses the memory of the step before (layers/buffers.py) as Caffe reuses its
blobs: the same storage holds each new diff and top, and every value is what a net that
allocates afresh computes. (The convolutions here take conv_ops' gemm path, whose kernels
write into the memory offered; torch's own kernels allocate.)"""
from __future__ import annotations

import numpy as np
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.nets.net import Net

NET = """
name: "reuse"
force_backward: true
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 3 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "score" type: "Convolution" bottom: "conv2" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def _net() -> Net:
    torch.manual_seed(0)
    return Net(text_format.Parse(NET, caffe_pb2.NetParameter()), phase="train")


def _feed(net: Net, seed: int) -> None:
    rng = np.random.default_rng(seed)
    net.set_input("data", rng.standard_normal((2, 3, 12, 12)).astype(np.float32))
    net.set_input("label", rng.integers(0, 3, (2, 1, 4, 4)).astype(np.float32))


def _step(net: Net, seed: int) -> dict[str, np.ndarray]:
    _feed(net, seed)
    net.clear_param_diffs()
    net.forward_backward()
    values = {f"{name}/data": blob.data.copy() for name, blob in net.blobs.items()}
    values |= {f"{name}/diff": blob.diff.copy() for name, blob in net.blobs.items()}
    values |= {f"{layer}/{k}": p.diff.copy() for layer, ps in net.params.items()
               for k, p in enumerate(ps)}
    return values


def _storage(net: Net) -> dict[str, int]:
    """Where the largest reused tensors live."""
    return {"conv1 weight diff": net.params["conv1"][0].grad.data_ptr(),
            "conv2 weight diff": net.params["conv2"][0].grad.data_ptr(),
            "conv1 bias diff": net.params["conv1"][1].grad.data_ptr(),
            "conv1 diff": net.blobs["conv1"].grad.data_ptr(),
            "pool1 diff": net.blobs["pool1"].grad.data_ptr(),
            "conv2 data": net.blobs["conv2"].tensor.data_ptr(),
            "pool1 data": net.blobs["pool1"].tensor.data_ptr()}


def test_the_second_step_writes_into_the_first_steps_memory_and_computes_the_same():
    net = _net()
    _step(net, seed=1)
    storage = _storage(net)
    second = _step(net, seed=2)
    assert _storage(net) == storage

    fresh = _net()
    reference = _step(fresh, seed=2)
    assert second.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(second[key], reference[key], err_msg=key)


def test_diffs_accumulate_over_passes_without_a_clear():
    """iter_size: two forward-backward passes after one clear sum their param diffs."""
    net = _net()
    _step(net, seed=1)                         # leaves diffs parked for reuse
    net.clear_param_diffs()
    for seed in (3, 4):
        _feed(net, seed)
        net.forward_backward()
    total = net.params["conv1"][0].diff.copy()
    expected = sum(_step(_net(), seed)["conv1/0"] for seed in (3, 4))
    np.testing.assert_allclose(total, expected, rtol=1e-6, atol=1e-7)


def test_cleared_diffs_read_zero_until_the_next_backward():
    net = _net()
    _step(net, seed=1)
    net.clear_param_diffs()
    assert not net.params["conv1"][0].diff.any()
    _feed(net, seed=2)
    net.forward_backward()
    assert net.params["conv1"][0].diff.any()
