"""Hostile and broken files: each kind ends in our error class, naming the file (and
layer), before anything is allocated from a size the file only declares.

Sizes a file declares are checked against the bytes it holds; these tests run
under the fuzz harness's address-space cap, so an allocation sized by a lying
header fails them with a MemoryError instead of passing unnoticed.
"""
from __future__ import annotations

import argparse
import pickle
import struct
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fuzz_harness import memory_cap
from solver_cases import solver_text, write, write_hdf5_source

from fcnwild.base.errors import NetError, PrototxtError, SolverError, WeightsError
from fcnwild.nets import wire
from fcnwild.nets.net import Net
from fcnwild.nets.prototxt import read_net_param
from fcnwild.nets.weights import read_weights, write_torch_weights
from fcnwild.solvers.solver import Solver
from fcnwild.tools import train_cmd

CAFFE = Path(__file__).parent / "fixtures" / "caffe_reference"
# torch warns about the pickle protocol of the hand-made pickle below
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


@pytest.fixture(autouse=True)
def capped():
    with memory_cap():
        yield


def _blob(shape: tuple[int, ...], values: bytes, packed_dims: bool = True) -> bytes:
    dims = b"".join(wire.encode_varint(d & (2**64 - 1)) for d in shape)
    shape_msg = wire.length_prefix(1, len(dims)) + dims
    return (wire.length_prefix(5, len(values)) + values
            + wire.length_prefix(7, len(shape_msg)) + shape_msg)


def _caffemodel(path: Path, layer: str, blob: bytes) -> Path:
    body = wire.length_prefix(1, len(layer)) + layer.encode() + wire.length_prefix(7, len(blob))
    body += blob
    path.write_bytes(wire.length_prefix(100, len(body)) + body)
    return path


def _raises(error_class, path: Path, match: str, layer: str | None = None):
    with pytest.raises(error_class, match=match) as info:
        read_weights(path)
    assert type(info.value) is error_class
    assert str(path) in str(info.value)
    if layer is not None:
        assert info.value.layer == layer
    return info.value


# ------------------------------------------------------------------ caffemodel
def test_caffemodel_declaring_a_trillion_floats_with_three_present(tmp_path):
    path = _caffemodel(tmp_path / "huge.caffemodel", "fc",
                       _blob((10**6, 10**6), struct.pack("<3f", 1, 2, 3)))
    _raises(WeightsError, path, r"declares shape \(1000000, 1000000\) \(1000000000000 values\) "
            r"but holds 3", layer="fc")


def test_caffemodel_length_prefix_past_the_end_of_the_file(tmp_path):
    for length in (2**31, 2**62):
        path = tmp_path / f"prefix_{length}.caffemodel"
        path.write_bytes(wire.length_prefix(100, length) + b"\x0a\x02fc")
        _raises(WeightsError, path, "corrupted or truncated caffemodel")


def test_caffemodel_negative_dimension(tmp_path):
    path = _caffemodel(tmp_path / "negative.caffemodel", "fc",
                       _blob((2, -3), struct.pack("<6f", *range(6))))
    _raises(WeightsError, path, "negative dimension", layer="fc")


def test_caffemodel_float_payload_of_a_partial_value(tmp_path):
    path = _caffemodel(tmp_path / "partial.caffemodel", "fc", _blob((1,), b"\x00\x00\x80"))
    _raises(WeightsError, path, "not a whole number of 4-byte values")


def test_caffemodel_layer_name_that_is_not_utf8(tmp_path):
    path = _caffemodel(tmp_path / "name.caffemodel", "fc", _blob((1,), struct.pack("<f", 1)))
    data = path.read_bytes().replace(b"fc", b"\xff\xfe")
    path.write_bytes(data)
    _raises(WeightsError, path, "not UTF-8")


def test_nan_and_inf_weights_are_valid_data(tmp_path):
    values = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    path = _caffemodel(tmp_path / "nan.caffemodel", "fc", _blob((4,), values.tobytes()))
    np.testing.assert_array_equal(read_weights(path)["fc"][0], values)


# ------------------------------------------------------------------ HDF5 weights
def _h5(path: Path, build) -> Path:
    with h5py.File(path, "w") as h5:
        group = h5.create_group("data/conv")
        build(h5, group)
    return path


@pytest.mark.parametrize("kind, build, match", [
    ("no_data", lambda h5, g: g.create_dataset("0", shape=(2**40,), dtype="f4"),
     r"declares shape \(1099511627776,\) \(4398046511104 bytes\) but the file stores 0 bytes"),
    ("chunks_missing", lambda h5, g: g.create_dataset("0", shape=(10**6, 10**6), dtype="f4",
                                                       chunks=(1024, 1)),
     "but the file stores 0 bytes"),
    ("integers", lambda h5, g: g.create_dataset("0", data=np.arange(4)),
     "'/data/conv/0' is not a float dataset"),
    ("strings", lambda h5, g: g.create_dataset("0", data=np.array([b"x"])),
     "is not a float dataset"),
    ("compound", lambda h5, g: g.create_dataset("0", data=np.zeros(2, "f4,i4")),
     "is not a float dataset"),
    ("null", lambda h5, g: g.create_dataset("0", data=h5py.Empty("f4")),
     "is not a float dataset"),
    ("external", lambda h5, g: g.create_dataset("0", shape=(4,), dtype="f4",
                                                 external=[("/etc/hostname", 0, 16)]),
     "keeps its values in other files"),
    ("huge_index", lambda h5, g: g.create_dataset("99999999999", data=np.ones(2, "f4")),
     "blob index 99999999999 of a file holding 1 blobs"),
    ("unicode_digit", lambda h5, g: g.create_dataset("\u00b2", data=np.ones(2, "f4")),
     "must be a group of datasets named 0, 1"),
    ("link_loop", lambda h5, g: g.__setitem__("0", h5py.SoftLink("/data/conv/0")),
     "corrupted HDF5 weights file"),
    ("external_link", lambda h5, g: g.__setitem__("0", h5py.ExternalLink("gone.h5", "/x")),
     "is a link to nothing"),
])
def test_hdf5_weights_that_lie_or_hold_the_wrong_thing(tmp_path, kind, build, match):
    path = _h5(tmp_path / f"{kind}.caffemodel.h5", build)
    error = _raises(WeightsError, path, match)
    if kind != "link_loop":
        assert error.layer == "conv"


def test_hdf5_with_damaged_internals(tmp_path):
    data = bytearray((CAFFE / "format_hdf5_weights" / "weights.caffemodel.h5").read_bytes())
    data[800:1200] = b"\xff" * 400           # object headers and the root group's heap
    path = tmp_path / "damaged.caffemodel.h5"
    path.write_bytes(bytes(data))
    _raises(WeightsError, path, "HDF5")


# ------------------------------------------------------------------ torch files
@pytest.mark.parametrize("kind, tensor, match", [
    ("expanded", torch.zeros(1).expand(10**12),
     r"declares shape \(1000000000000,\) but its storage holds 4 bytes"),
    ("strided", torch.zeros(6).as_strided((10**6, 10**6), (0, 0)), "storage holds 24 bytes"),
    ("integers", torch.arange(4), "expected a dense floating-point tensor"),
    ("complex", torch.zeros(2, dtype=torch.complex64), "expected a dense floating-point"),
    ("sparse", torch.sparse_coo_tensor([[0]], [1.0], (10**9,), check_invariants=True),
     "expected a dense"),
])
def test_torch_weights_that_lie_or_hold_the_wrong_thing(tmp_path, kind, tensor, match):
    path = tmp_path / f"{kind}.pt"
    torch.save({"conv/0": tensor}, path)
    _raises(WeightsError, path, match)


@pytest.mark.parametrize("key", ["conv/99999999999", "conv/\u00b2", "conv", 7])
def test_torch_weights_with_odd_keys(tmp_path, key):
    path = tmp_path / "keys.pt"
    torch.save({key: torch.ones(2)}, path)
    _raises(WeightsError, path, "blob index|is not '<layer>/<index>'")


def test_torch_file_with_code_does_not_run_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    path = tmp_path / "payload.pt"
    path.write_bytes(pickle.dumps({"conv/0": Payload()}))
    _raises(WeightsError, path, "not a loadable torch weights file")
    assert not marker.exists()


def test_torch_weights_round_trip_keeps_nan(tmp_path):
    path = tmp_path / "nan.pt"
    write_torch_weights(path, {"conv": {0: np.array([np.nan, 1.0], np.float32)}})
    np.testing.assert_array_equal(read_weights(path)["conv"][0], [np.nan, 1.0])


# ------------------------------------------------------------------ prototxt and solver files
def test_net_path_with_a_nul_byte():
    with pytest.raises(PrototxtError, match="not a usable file name"):
        read_net_param("net\0.prototxt")


def test_solver_naming_a_missing_or_directory_net(tmp_path):
    for net, what in (("nets/missing.prototxt", "does not exist"), (".", "is a directory")):
        path = write(tmp_path / "solver.prototxt", solver_text(net))
        with pytest.raises(SolverError, match=what) as info:
            Solver(path)
        assert type(info.value) is SolverError and info.value.file == str(path)


def test_net_with_a_blob_past_caffes_int_max(tmp_path):
    path = write(tmp_path / "net.prototxt", """
layer { name: "in" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 65536 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 65536 kernel_size: 1 } }
""")
    with pytest.raises(NetError, match="more than Caffe's limit of INT_MAX") as info:
        Net(path)
    assert info.value.layer == "conv" and info.value.file == str(path)


# ------------------------------------------------------------------ Python layers
_PYTHON_NET = """
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "train.txt" batch_size: 2 } }
layer { name: "py" type: "Python" bottom: "data" top: "copy"
  python_param { module: "marker_layer" layer: "Identity" } }
layer { name: "score" type: "Convolution" bottom: "copy" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""

_MARKER_LAYER = '''
import pathlib
pathlib.Path(__file__).with_name("imported").write_text("the module ran")


class Identity:
    def __init__(self, param): self.param = param
    def setup(self, bottom, top): pass
    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top): top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = top[0].diff
'''


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return train_cmd.run(parser.parse_args(argv))


def test_python_layer_needs_the_opt_in_in_the_library_and_the_cli(tmp_path, monkeypatch):
    write_hdf5_source(tmp_path, "train", rows=[4], seed=3)
    write(tmp_path / "marker_layer.py", _MARKER_LAYER)
    net = write(tmp_path / "net.prototxt", _PYTHON_NET)
    solver = write(tmp_path / "solver.prototxt", solver_text("net.prototxt", max_iter=1,
                                                            snapshot_prefix="snap/run"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "marker_layer", raising=False)
    for refused in (lambda: Net(net, phase="TRAIN"),
                    lambda: _train(["--solver", str(solver), "--quiet"])):
        with pytest.raises(NetError, match="allow_python=True / --allow-python") as info:
            refused()
        assert info.value.layer == "py" and Path(info.value.file).resolve() == net.resolve()
        assert not (tmp_path / "imported").exists()
    assert _train(["--solver", str(solver), "--allow-python", "--quiet"]) == 0
    assert (tmp_path / "imported").exists()
