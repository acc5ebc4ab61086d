"""``fcnwild compare`` on the dumps users have (an .npz, a folder of .npy files, an HDF5 file
of one dataset per name), and the pycaffe script ``--emit-caffe-script`` writes to record a
reference in the full layout with Caffe."""
from __future__ import annotations

import re
import runpy
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from caffe_fixture import FIXTURES

import fcnwild.caffe
from fcnwild.nets.net import Net
from fcnwild.tools.cli import main

FORMATS = ["npz", "npy", "h5"]


def caffe_arrays(case: str, content: str) -> dict[str, np.ndarray]:
    """A real Caffe case's arrays under the flat naming rule: the blobs' data, with
    ``diffs`` their diffs and the params' diffs, with ``params`` the params too."""
    with h5py.File(FIXTURES / case / "blobs.h5") as h5:
        arrays = {name: h5["forward"][name][()] for name in h5["forward"]}
        if content in ("diffs", "params"):
            arrays.update({f"{name}@diff": h5["backward"][name][()] for name in h5["backward"]})
            for layer in h5.get("param_diffs", {}):
                for i in h5["param_diffs"][layer]:
                    arrays[f"{layer}@param{i}@diff"] = h5["param_diffs"][layer][i][()]
        if content == "params":
            for layer in h5["params"]:
                for i in h5["params"][layer]:
                    arrays[f"{layer}@param{i}"] = h5["params"][layer][i][()]
    return arrays


def save_dump(arrays: dict[str, np.ndarray], path: Path, fmt: str) -> Path:
    """As a numpy user would: np.savez, np.save per name, or h5py datasets."""
    if fmt == "npz":
        target = path.with_suffix(".npz")
        np.savez(target, **arrays)
    elif fmt == "npy":
        target = path
        for name, value in arrays.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(target / f"{name}.npy", value)
    else:
        target = path.with_suffix(".h5")
        with h5py.File(target, "w") as h5:
            for name, value in arrays.items():
                h5[name] = value
    return target


def compare(case_or_model, reference: Path, *extra: str) -> int:
    model = case_or_model if isinstance(case_or_model, Path) else \
        FIXTURES / case_or_model / "net.prototxt"
    return main(["compare", "--model", str(model), "--reference", str(reference), *extra])


def table_rows(out: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> pass | FAIL, from the table compare prints."""
    return {(kind, name): verdict for kind, name, verdict in
            re.findall(r"^(\S+) +(\S+) +\S+ +\S+ +\S+ +\S+  (pass|FAIL)", out, re.M)}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", ["data", "diffs", "params"])
def test_a_flat_dump_of_caffes_arrays_passes(fmt, content, tmp_path, capsys):
    """conv_k3_p1 (real Caffe): no loss, so backward starts from the output's diff in
    the dump; without --weights the dump's params are the weights (the net's gaussian
    filler would fail)."""
    arrays = caffe_arrays("conv_k3_p1", content)
    reference = save_dump(arrays, tmp_path / "dump", fmt)
    weights = [] if content == "params" else \
        ["--weights", str(FIXTURES / "conv_k3_p1" / "weights.caffemodel")]
    assert compare("conv_k3_p1", reference, *weights) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows.pop(("forward", "conv")) == "pass"
    if content == "data":
        assert rows == {}           # the input was fed, not compared; no backward ran
    else:
        assert rows.pop(("backward", "conv")) == rows.pop(("backward", "data")) == "pass"
        assert rows.pop(("param_diffs", "conv/0")) == rows.pop(("param_diffs", "conv/1")) \
            == "pass"
        assert rows == {}


def test_params_in_a_dump_are_compared_when_weights_are_given(tmp_path, capsys):
    reference = save_dump(caffe_arrays("conv_k3_p1", "params"), tmp_path / "dump", "npz")
    assert compare("conv_k3_p1", reference, "--weights",
                   str(FIXTURES / "conv_k3_p1" / "weights.caffemodel")) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[("params", "conv/0")] == rows[("params", "conv/1")] == "pass"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_net_input_is_fed_by_name(fmt, tmp_path, capsys):
    """Two inputs (scores, labels with ignored pixels), a loss with weight 0.5 driving
    backward: fed wrongly, the loss and the score diff would differ."""
    reference = save_dump(caffe_arrays("softmax_loss_valid_lw05", "diffs"), tmp_path / "d", fmt)
    assert compare("softmax_loss_valid_lw05", reference) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows == {("forward", "loss"): "pass", ("backward", "score"): "pass",
                    ("backward", "label"): "pass", ("backward", "loss"): "pass"}


def test_names_that_are_no_blob_or_layer_are_an_error(tmp_path, capsys):
    arrays = caffe_arrays("conv_k3_p1", "diffs")
    arrays["conv_diff"] = arrays["conv@diff"]
    arrays["conv2@param0"] = arrays["conv@param0@diff"]
    assert compare("conv_k3_p1", save_dump(arrays, tmp_path / "d", "npz")) == 2
    err = capsys.readouterr().err
    assert "2 array name(s) name no blob or layer of the net: conv2@param0, conv_diff" in err
    assert "<blob>@diff" in err and "<layer>@param<i>" in err


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_perturbed_array_fails_and_is_named(fmt, tmp_path, capsys):
    arrays = caffe_arrays("conv_k3_p1", "diffs")
    arrays["data@diff"] = arrays["data@diff"] * (1 + 1e-3)
    reference = save_dump(arrays, tmp_path / "d", fmt)
    assert compare("conv_k3_p1", reference, "--weights",
                   str(FIXTURES / "conv_k3_p1" / "weights.caffemodel")) == 1
    rows = table_rows(capsys.readouterr().out)
    assert rows.pop(("backward", "data")) == "FAIL"
    assert set(rows.values()) == {"pass"}


SLASHED = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "inception/3x3" type: "Convolution" bottom: "data" top: "inception/3x3"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "inception/relu" type: "ReLU" bottom: "inception/3x3" top: "inception/out" }
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_names_with_slashes_as_googlenets_are_read_from_every_format(fmt, tmp_path, capsys):
    model = tmp_path / "net.prototxt"
    model.write_text(SLASHED)
    net = Net(model)
    data = np.random.RandomState(3).randn(1, 2, 4, 4).astype(np.float32)
    net.forward(data=data)
    arrays = {"data": data, "inception/out": net.blobs["inception/out"].data,
              "inception/3x3@param0": net.params["inception/3x3"][0].data}
    assert compare(model, save_dump(arrays, tmp_path / "d", fmt), "--phase", "test") == 0
    assert table_rows(capsys.readouterr().out) == {("forward", "inception/out"): "pass"}


def test_a_name_meaning_two_arrays_in_the_net_is_refused(tmp_path, capsys):
    model = tmp_path / "net.prototxt"
    model.write_text("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "p" type: "Power" bottom: "x" top: "x@diff" }""")
    reference = save_dump({"x": np.ones(2, np.float32), "x@diff": np.ones(2, np.float32)},
                          tmp_path / "d", "npz")
    assert compare(model, reference) == 2
    assert "'x@diff' is ambiguous in this net" in capsys.readouterr().err


# ------------------------------------------------------------------ --emit-caffe-script

TRAIN_NET = """
name: "recorded"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "bn" }
layer { name: "relu" type: "ReLU" bottom: "bn" top: "bn" }
layer { name: "drop1" type: "Dropout" bottom: "bn" top: "drop1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "score" type: "Convolution" bottom: "drop1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "drop2" type: "Dropout" bottom: "score" top: "score" dropout_param { dropout_ratio: 0.3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""

NO_LOSS_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "sig" type: "Sigmoid" bottom: "ip" top: "out" }
"""


class FakeCaffeNet:
    """pycaffe's Net as the emitted script uses it, on fcnwild's Net (TRAIN = 0)."""

    def __init__(self, model: str, *args) -> None:
        weights, phase = args if len(args) == 2 else (None, args[0])
        self.net = net = Net(model, weights=weights, phase="train" if phase == 0 else "test")
        self.blobs, self.params = net.blobs, net.params
        self.inputs, self.outputs = net.inputs, net.outputs
        self._layer_names = net.layer_names
        self.layers = [types.SimpleNamespace(type=layer.type_name) for layer in net.layers]
        self.bottom_names = dict(zip(net.layer_names, net.bottom_names))
        self.top_names = dict(zip(net.layer_names, net.top_names))
        self.blob_loss_weights = {name: net.loss_weights.get(name, 0.0) for name in net.blobs}

    def reshape(self) -> None:
        self.net.reshape()

    def _forward(self, start: int, end: int) -> float:
        return self.net.forward_range(start, end)

    def _backward(self, start: int, end: int) -> None:
        self.net.backward_range(start, end)


def fake_caffe() -> types.ModuleType:
    module = types.ModuleType("caffe")
    module.TRAIN, module.TEST = 0, 1
    module.Net = FakeCaffeNet
    module.set_mode_cpu = lambda: None
    module.set_random_seed = lambda seed: None
    return module


# The emitted script under the fake above (its logic alone) and under fcnwild.caffe as
# `caffe` (pycaffe's API as users run it).
CAFFE_MODULES = ["fake", "fcnwild.caffe"]


def emit_and_record(tmp_path: Path, model_text: str, inputs: dict[str, np.ndarray],
                    phase: str, caffe_module: str, monkeypatch, weights: Path | None = None
                    ) -> tuple[Path, Path, str]:
    model = tmp_path / "model.prototxt"
    model.write_text(model_text)
    args = ["compare", "--emit-caffe-script", str(tmp_path / "record.py"), "--model",
            str(model), "--phase", phase]
    args += ["--weights", str(weights)] if weights else []
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    assert main(args) == 0
    script = (tmp_path / "record.py").read_text()
    module = fake_caffe() if caffe_module == "fake" else fcnwild.caffe
    monkeypatch.setitem(sys.modules, "caffe", module)
    monkeypatch.setattr(sys, "argv", ["record.py", str(tmp_path / "ref.h5")])
    runpy.run_path(str(tmp_path / "record.py"), run_name="__main__")
    return model, tmp_path / "ref.h5", script


def test_the_emitted_script_is_short_readable_python_2_and_3(tmp_path, capsys):
    model = tmp_path / "m.prototxt"
    model.write_text(NO_LOSS_NET)
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    assert main(["compare", "--emit-caffe-script", str(tmp_path / "rec.py"), "--model",
                 str(model), "--phase", "test", "--input", f"x={tmp_path / 'x.npy'}"]) == 0
    text = (tmp_path / "rec.py").read_text()
    compile(text, "rec.py", "exec")
    assert "from __future__ import print_function" in text and 'f"' not in text
    assert f"MODEL = {str(model)!r}" in text and "WEIGHTS = None" in text
    assert "PHASE = caffe.TEST" in text
    assert f"INPUTS = {{'x': {str(tmp_path / 'x.npy')!r}}}" in text
    for group in ("inputs/", "params/", "forward/", "backward/", "param_diffs/", "top_diff/",
                  "aux/dropout_mask/", "params_after_forward/"):
        assert f'"{group}' in text, group
    assert len(text.splitlines()) < 120
    assert main(["compare", "--emit-caffe-script", str(tmp_path / "r.py"), "--model",
                 str(model), "--input", "x"]) == 2
    assert "expected NAME=FILE.npy" in capsys.readouterr().err


@pytest.mark.parametrize("caffe_module", CAFFE_MODULES)
def test_a_recorded_train_net_with_dropout_and_batchnorm_passes(caffe_module, tmp_path,
                                                                 monkeypatch, capsys):
    rng = np.random.RandomState(0)
    inputs = {"data": rng.randn(2, 3, 5, 5).astype(np.float32),
              "label": rng.randint(0, 3, (2, 1, 5, 5)).astype(np.float32)}
    model, reference, _ = emit_and_record(tmp_path, TRAIN_NET, inputs, "train", caffe_module,
                                          monkeypatch)
    with h5py.File(reference) as h5:
        assert sorted(h5["aux/dropout_mask"]) == ["drop1", "drop2"]
        assert sorted(h5["params_after_forward"]) == ["bn"]
        masks = [h5["aux/dropout_mask"][name][()] for name in ("drop1", "drop2")]
    # Whole masks, times 1 / (1 - ratio), also where the bottom is 0 (score is 0 wherever
    # drop1 zeroed all channels: there the mask still scales the gradient).
    for mask, ratio in zip(masks, (0.5, 0.3)):
        assert np.unique(mask).tolist() == pytest.approx([0.0, 1 / (1 - ratio)], rel=1e-6)
    capsys.readouterr()
    # No --weights: the recorded params (the fillers Caffe drew) are loaded.
    assert compare(model, reference) == 0, capsys.readouterr().out
    kinds = {kind for kind, _ in table_rows(capsys.readouterr().out)}
    assert kinds == {"forward", "params_after_forward", "backward", "param_diffs"}
    # Without the masks our own dropout would draw others: the comparison must fail.
    with h5py.File(reference, "a") as h5:
        del h5["aux"]
    assert compare(model, reference) == 1


@pytest.mark.parametrize("caffe_module", CAFFE_MODULES)
def test_a_recorded_net_without_loss_starts_backward_from_random_diffs(caffe_module, tmp_path,
                                                                       monkeypatch, capsys):
    weights_net = tmp_path / "w.prototxt"
    weights_net.write_text(NO_LOSS_NET)
    Net(weights_net).save(tmp_path / "w.caffemodel")
    inputs = {"x": np.random.RandomState(1).randn(3, 4).astype(np.float32)}
    model, reference, script = emit_and_record(tmp_path, NO_LOSS_NET, inputs, "test",
                                               caffe_module, monkeypatch,
                                               weights=tmp_path / "w.caffemodel")
    assert f"--weights {tmp_path / 'w.caffemodel'} --phase test" in script
    with h5py.File(reference) as h5:
        assert list(h5["top_diff"]) == ["out"] and np.abs(h5["top_diff/out"][()]).sum() > 0
    capsys.readouterr()
    assert compare(model, reference, "--phase", "test", "--weights",
                   str(tmp_path / "w.caffemodel")) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[("params", "ip/0")] == rows[("param_diffs", "ip/0")] == "pass"
    assert rows[("backward", "x")] == "pass"
