"""BVLC Caffe's published deploy nets build through ``caffe.Net(path, caffe.TEST)`` with
Caffe's blob shapes and run forward (fixtures: tests/fixtures/bvlc_models/README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fcnwild.caffe as caffe

MODELS = Path(__file__).resolve().parent / "fixtures" / "bvlc_models"

# Blob shapes Caffe reports for these nets at their deploy input shapes.
SHAPES = {
    "bvlc_alexnet_deploy.prototxt": {
        "conv1": (10, 96, 55, 55), "norm1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27),
        "conv2": (10, 256, 27, 27), "pool2": (10, 256, 13, 13), "conv5": (10, 256, 13, 13),
        "pool5": (10, 256, 6, 6), "fc6": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)},
    "bvlc_reference_caffenet_deploy.prototxt": {
        "conv1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27), "norm1": (10, 96, 27, 27),
        "norm2": (10, 256, 13, 13), "pool5": (10, 256, 6, 6), "fc7": (10, 4096),
        "prob": (10, 1000)},
    "bvlc_caffenet_full_conv.prototxt": {
        "pool5": (1, 256, 13, 13), "fc6-conv": (1, 4096, 8, 8), "fc8-conv": (1, 1000, 8, 8),
        "prob": (1, 1000, 8, 8)},
    "bvlc_googlenet_deploy.prototxt": {
        "conv1/7x7_s2": (10, 64, 112, 112), "pool1/3x3_s2": (10, 64, 56, 56),
        "conv2/3x3": (10, 192, 56, 56), "pool2/3x3_s2": (10, 192, 28, 28),
        "inception_3a/output": (10, 256, 28, 28), "inception_3b/output": (10, 480, 28, 28),
        "pool3/3x3_s2": (10, 480, 14, 14), "inception_4a/output": (10, 512, 14, 14),
        "inception_4d/output": (10, 528, 14, 14), "inception_4e/output": (10, 832, 14, 14),
        "pool4/3x3_s2": (10, 832, 7, 7), "inception_5b/output": (10, 1024, 7, 7),
        "pool5/7x7_s1": (10, 1024, 1, 1), "prob": (10, 1000)},
    "lenet.prototxt": {
        "conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12), "conv2": (64, 50, 8, 8),
        "pool2": (64, 50, 4, 4), "ip1": (64, 500), "prob": (64, 10)},
    "cifar10_quick.prototxt": {
        "conv1": (1, 32, 32, 32), "pool1": (1, 32, 16, 16), "pool2": (1, 32, 8, 8),
        "pool3": (1, 64, 4, 4), "ip1": (1, 64), "prob": (1, 10)},
}


@pytest.mark.parametrize("filename", sorted(SHAPES))
def test_deploy_net_builds_with_caffes_shapes_and_runs_forward(filename):
    net = caffe.Net(str(MODELS / filename), caffe.TEST)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    for name, shape in SHAPES[filename].items():
        assert net.blobs[name].shape == shape, name
    # A real forward at batch 1 (the shapes above are the deploy batch's), with random
    # weights (deploy files have no fillers) and a random image.
    batch = 1
    net.blobs["data"].reshape(batch, *net.blobs["data"].shape[1:])
    net.reshape()
    generator = torch.Generator().manual_seed(0)
    for blobs in net.params.values():
        weight = torch.from_numpy(blobs[0].data)
        bound = (6.0 / weight[0].numel()) ** 0.5
        weight.uniform_(-bound, bound, generator=generator)
    image = torch.rand(net.blobs["data"].shape, generator=generator).numpy() * 255 - 128
    prob = net.forward(data=image)["prob"]
    expected = (batch,) + SHAPES[filename]["prob"][1:]
    assert prob.shape == expected
    assert np.isfinite(prob).all() and (prob >= 0).all()
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-4)
    assert prob.max() > 2.0 / expected[1]            # random weights: not the uniform output
