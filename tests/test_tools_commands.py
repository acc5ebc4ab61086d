"""``fcnwild time``, ``convert`` and ``surgery`` end to end through the command line, on tiny
nets: what each prints and writes, not only its exit status."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_fixture import FIXTURES
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.nets.net import Net
from fcnwild.nets.prototxt import read_net_param, read_text
from fcnwild.nets.weights import open_weights
from fcnwild.tools.cli import main

V1_CASE = FIXTURES / "format_v1_layers"

TINY_TRAIN = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 dim: 1 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_time_prints_caffes_per_layer_table_and_the_gemm_comparison(tmp_path, capsys):
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY_TRAIN)
    assert main(["time", "--model", str(model), "--iterations", "2", "--gemm-size", "512",
                 "--input", "data=1,3,20,20", "--input", "label=1,1,18,18"]) == 0
    out = capsys.readouterr().out
    for layer in ("conv1", "relu1", "score", "loss"):
        assert re.search(rf"^\s*{layer}\tforward: +[0-9.]+ ms\.$", out, re.M), layer
        assert re.search(rf"^\s*{layer}\tbackward: +[0-9.]+ ms\.", out, re.M), layer
    # conv1 at the reshaped input: 2 * 27 * 4 * 18 * 18 FLOPs forward, plus the weight
    # grad (the data needs no diff), score a 1x1 conv 4 -> 3 with both grads.
    conv1 = 2 * 27 * 4 * 18 * 18 * 2
    score = 2 * 4 * 3 * 18 * 18 * 3
    flops = float(re.search(r"FLOPs per forward-backward: ([0-9.]+) GFLOP", out).group(1))
    assert flops == pytest.approx((conv1 + score) / 1e9, abs=0.005)
    assert re.search(r"GEMM \(512x512 float32 matmul, same run\): [0-9.]+ GFLOP/s; "
                     r"the net reaches [0-9.]+ of it", out)
    assert "Average Forward-Backward:" in out


def test_time_rejects_a_malformed_input_shape(tmp_path, capsys):
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY_TRAIN)
    assert main(["time", "--model", str(model), "--iterations", "1", "--no-gemm",
                 "--input", "data=1,3,x,20"]) == 2
    assert "--input 'data=1,3,x,20'" in capsys.readouterr().err


def test_convert_upgrades_a_v1_prototxt_as_caffe_does(tmp_path, capsys):
    out = tmp_path / "v2.prototxt"
    assert main(["convert", str(V1_CASE / "net.prototxt"), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ours = read_text(out, caffe_pb2.NetParameter())
    caffe = read_text(V1_CASE / "net_upgraded.prototxt", caffe_pb2.NetParameter())
    assert not ours.layers and [layer.type for layer in ours.layer][0] == "Input"
    assert text_format.MessageToString(ours) == text_format.MessageToString(caffe)


def test_convert_with_the_model_gives_legacy_blobs_the_nets_shapes(tmp_path, capsys):
    legacy = V1_CASE / "weights.caffemodel"
    assert main(["convert", str(legacy), str(tmp_path / "w.pt")]) == 2
    assert "legacy 4-D blob shapes" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()
    modern = tmp_path / "modern.caffemodel"
    assert main(["convert", str(legacy), str(modern), "--model",
                 str(V1_CASE / "net.prototxt")]) == 0
    with open_weights(modern) as stored:
        assert stored["conv1"][1].shape == (8,) and not stored["conv1"][1].legacy_shape


@pytest.mark.parametrize("chain", [(".caffemodel.h5", ".pt", ".caffemodel"),
                                   (".pt", ".caffemodel.h5", ".caffemodel")])
def test_convert_round_trips_weights_through_every_format(tmp_path, chain, capsys):
    model = V1_CASE / "net.prototxt"
    source = tmp_path / "source.caffemodel"
    Net(model, weights=V1_CASE / "weights.caffemodel", phase="test").save(source)
    with open_weights(source) as stored:
        expected = stored.arrays()
    current = source
    for suffix in chain:
        target = tmp_path / f"w{suffix}"
        assert main(["convert", str(current), str(target)]) == 0
        assert f"wrote {target}: weights of {len(expected)} layers" in capsys.readouterr().out
        current = target
    with open_weights(current) as stored:
        got = stored.arrays()
    assert list(got) == list(expected)
    for name, blobs in expected.items():
        for ours, ref in zip(got[name], blobs):
            np.testing.assert_array_equal(ours, ref)
    # The converted weights run the net as the original ones do.
    data = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    outputs = [Net(model, weights=w, phase="test").forward(data=data)
               for w in (V1_CASE / "weights.caffemodel", current)]
    for name in outputs[0]:
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name])


def test_convert_refuses_a_net_definition_from_weights_only(tmp_path, capsys):
    h5 = tmp_path / "w.caffemodel.h5"
    assert main(["convert", str(V1_CASE / "weights.caffemodel"), str(h5), "--model",
                 str(V1_CASE / "net.prototxt")]) == 0
    assert main(["convert", str(h5), str(tmp_path / "net.prototxt")]) == 2
    assert "a net definition can only come from" in capsys.readouterr().err
    assert not (tmp_path / "net.prototxt").exists()


FC_NET = """
name: "classifier"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "fc6" type: "InnerProduct" bottom: "conv" top: "fc6"
        inner_product_param { num_output: 5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 4 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        inner_product_param { num_output: 7 } }
"""
CONV_NET = """
name: "fully_convolutional"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 11 dim: 11 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "conv" top: "fc6"
        convolution_param { num_output: 5 kernel_size: 3 dilation: 4 } }
layer { name: "fc7" type: "Convolution" bottom: "fc6" top: "fc7"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def _randomised(prototxt: Path, seed: int) -> Path:
    net = Net(prototxt, phase="test")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blobs in net.params.values():
            for blob in blobs:
                blob.tensor.copy_(torch.randn(blob.shape, generator=generator))
    weights = prototxt.with_suffix(".caffemodel")
    net.save(weights)
    return weights


def test_surgery_turns_inner_products_into_dilated_convolutions(tmp_path, capsys):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    (tmp_path / "conv.prototxt").write_text(CONV_NET)
    source = _randomised(tmp_path / "fc.prototxt", 3)
    output = tmp_path / "init.caffemodel"
    assert main(["surgery", "--weights", str(source), "--model",
                 str(tmp_path / "conv.prototxt"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "fc6/0: (5, 18) -> (5, 2, 3, 3)" in printed
    assert "fc7/0: (4, 5) -> (4, 5, 1, 1)" in printed
    fc = Net(tmp_path / "fc.prototxt", weights=source, phase="test")
    conv = Net(tmp_path / "conv.prototxt", weights=output, phase="test")
    for name in ("conv", "fc6", "fc7"):
        for ours, theirs in zip(conv.params[name], fc.params[name]):
            np.testing.assert_array_equal(ours.data.reshape(-1), theirs.data.reshape(-1))
    # A 3x3 window of the dilated net's input (taps 4 apart) is the classifier's input.
    x = np.random.default_rng(1).standard_normal((1, 2, 11, 11)).astype(np.float32)
    scores = conv.forward(data=x)["fc7"]
    expected = fc.forward(data=np.ascontiguousarray(x[:, :, ::4, ::4][:, :, :3, :3]),
                          blobs=["fc7"])["fc7"]
    np.testing.assert_allclose(scores[0, :, 0, 0], expected[0], rtol=1e-5, atol=1e-6)


def test_surgery_refuses_blobs_that_cannot_fill_the_target(tmp_path, capsys):
    (tmp_path / "fc.prototxt").write_text(FC_NET.replace("num_output: 5", "num_output: 6"))
    (tmp_path / "conv.prototxt").write_text(CONV_NET)
    source = _randomised(tmp_path / "fc.prototxt", 4)
    output = tmp_path / "init.caffemodel"
    assert main(["surgery", "--weights", str(source), "--model",
                 str(tmp_path / "conv.prototxt"), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "layer 'fc6'" in error and "cannot fill" in error
    assert not output.exists()
    assert read_net_param(tmp_path / "conv.prototxt").layer[2].name == "fc6"


def test_every_flag_of_every_verb_says_what_it_does():
    import argparse as _argparse

    from fcnwild.tools.cli import build_parser
    verbs = next(a for a in build_parser()._actions if isinstance(a, _argparse._SubParsersAction))
    silent = [f"{verb} {action.option_strings or action.dest}"
              for verb, parser in verbs.choices.items() for action in parser._actions
              if not action.help and not isinstance(action, _argparse._HelpAction)]
    assert silent == []


def test_the_progress_bar_shows_each_adversarial_loss_term_apart():
    import types

    from fcnwild.tools.progress import loss_terms
    solver = types.SimpleNamespace(smoothed_loss=3598.0, step_losses={
        "classifier": 22358.2, "representation": 3598.0, "loss": 2.7, "dom_loss": 0.69,
        "dom_loss_inv": 0.7})
    assert loss_terms(solver) == {"objective": "3598", "loss": "2.7", "dom_loss": "0.69",
                                  "dom_loss_inv": "0.7"}
    assert loss_terms(types.SimpleNamespace(smoothed_loss=1.25)) == {"loss": "1.25"}
