"""Weights files: caffemodel (wire-format reader and writer), Caffe HDF5, torch state dicts."""
from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import WeightsError
from fcnwild.nets import weights, wire
from fcnwild.nets.prototxt import read_binary

CAFFE = Path(__file__).parent / "fixtures" / "caffe_reference"
CAFFEMODELS = sorted(CAFFE.glob("*/weights.caffemodel"))


@pytest.mark.parametrize("path", CAFFEMODELS, ids=lambda p: p.parent.name)
def test_reader_agrees_with_protobuf(path):
    ref = read_binary(path, caffe_pb2.NetParameter())
    layers = list(ref.layer) or list(ref.layers)
    with weights.open_weights(path) as stored:
        assert set(stored) == {layer.name for layer in layers if len(layer.blobs)}
        for layer in layers:
            for blob, ours in zip(layer.blobs, stored.get(layer.name, [])):
                values = ours.load()
                np.testing.assert_array_equal(values.ravel(), np.array(blob.data, np.float32))
                if blob.HasField("shape"):
                    assert ours.shape == tuple(blob.shape.dim)


def test_writer_is_byte_identical_to_caffe():
    checked = 0
    for path in CAFFEMODELS:
        ref = read_binary(path, caffe_pb2.NetParameter())
        if not len(ref.layer) or any(b.HasField("num") for l in ref.layer for b in l.blobs):
            continue  # V1 / legacy-shape files are rewritten in the current format
        out = path.parent / "_roundtrip.caffemodel"
        try:
            weights.write_caffemodel(out, ref, weights.read_weights(path))
            assert out.read_bytes() == path.read_bytes(), path.parent.name
        finally:
            out.unlink(missing_ok=True)
        checked += 1
    assert checked > 50


def test_legacy_shapes_align_from_the_right():
    with weights.open_weights(CAFFE / "format_v1_layers" / "weights.caffemodel") as stored:
        ip = stored["ip1"]
        assert ip[0].legacy_shape and ip[0].shape == (1, 1, 10, 512)
        assert ip[0].fits((10, 512)) and not ip[0].fits((512, 10))
        assert ip[1].fits((10,)) and not ip[1].fits((10, 1))


def _blob_bytes(fields: bytes) -> bytes:
    return wire.length_prefix(7, len(fields)) + fields


def _layer_bytes(name: str, blobs: bytes) -> bytes:
    body = wire.length_prefix(1, len(name)) + name.encode() + blobs
    return wire.length_prefix(100, len(body)) + body


def test_unpacked_float_data_is_read(tmp_path):
    values = [1.5, -2.0, 3.25]
    unpacked = b"".join(wire.key(5, wire.FIXED32) + struct.pack("<f", v) for v in values)
    shape = wire.length_prefix(1, 1) + b"\x03"
    blob = unpacked + wire.length_prefix(7, len(shape)) + shape
    path = tmp_path / "old.caffemodel"
    path.write_bytes(_layer_bytes("fc", _blob_bytes(blob)))
    arrays = weights.read_weights(path)
    np.testing.assert_array_equal(arrays["fc"][0], np.array(values, np.float32))


def test_double_data_is_converted(tmp_path):
    data = struct.pack("<2d", 0.5, 4.0)
    blob = wire.length_prefix(8, len(data)) + data
    path = tmp_path / "double.caffemodel"
    path.write_bytes(_layer_bytes("fc", _blob_bytes(blob)))
    assert weights.read_weights(path)["fc"][0].tolist() == [0.5, 4.0]


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9, 0.999])
def test_truncated_caffemodel_is_a_weights_error(tmp_path, fraction):
    data = (CAFFE / "conv_k3_p1" / "weights.caffemodel").read_bytes()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:max(1, int(len(data) * fraction))])
    with pytest.raises(WeightsError) as err:
        weights.read_weights(path)
    assert str(path) in str(err.value)


def test_shape_and_count_disagreement_is_reported(tmp_path):
    data = struct.pack("<3f", 1, 2, 3)
    shape = wire.length_prefix(1, 2) + b"\x02\x02"
    blob = wire.length_prefix(5, len(data)) + data + wire.length_prefix(7, len(shape)) + shape
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(_layer_bytes("fc", _blob_bytes(blob)))
    with pytest.raises(WeightsError, match=r"shape \(2, 2\) \(4 values\) but holds 3"):
        weights.read_weights(path)


def test_empty_and_non_caffemodel_files(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        weights.open_weights(empty)
    text = tmp_path / "text.caffemodel"
    text.write_bytes(b'name: "not binary"\n')
    with pytest.raises(WeightsError):
        weights.open_weights(text)
    with pytest.raises(WeightsError, match="no such"):
        weights.open_weights(tmp_path / "absent.caffemodel")


@pytest.mark.parametrize("model", sorted(CAFFE.glob("*/net.prototxt"))[:3] + [
    Path(__file__).parents[1] / "prototxt/gta5_to_cityscapes/ga_net.prototxt"], ids=lambda p: p.parent.name)
def test_a_text_prototxt_given_as_weights_is_named_as_such(model, tmp_path):
    with pytest.raises(WeightsError, match="is a text prototxt .*, not a caffemodel"):
        weights.open_weights(model)
    # Without the first lines (as when a comment or a solver field comes first).
    body = tmp_path / "body.prototxt"
    body.write_text("# a net\n" + model.read_text().split("\n", 2)[-1])
    with pytest.raises(WeightsError, match="is a text prototxt"):
        weights.open_weights(body)


def test_hdf5_written_by_caffe_is_read():
    case = CAFFE / "format_hdf5_weights"
    ref = h5py.File(case / "blobs.h5", "r")
    with weights.open_weights(case / "weights.caffemodel.h5") as stored:
        for layer, blobs in ref["params"].items():
            for i, array in blobs.items():
                np.testing.assert_array_equal(stored[layer][int(i)].load(), array[()])


def test_hdf5_layout_errors(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(WeightsError, match="/data"):
        weights.open_weights(path)
    with h5py.File(path, "w") as f:
        f.create_group("data/conv").create_dataset("w", data=np.zeros(3))
    with pytest.raises(WeightsError, match="named 0, 1"):
        weights.open_weights(path)


def test_torch_state_dict_round_trip(tmp_path):
    arrays = {"conv": {0: np.arange(6, dtype=np.float32).reshape(2, 3), 1: np.ones(2)}}
    path = tmp_path / "w.pt"
    weights.write_torch_weights(path, arrays)
    loaded = weights.read_weights(path)
    np.testing.assert_array_equal(loaded["conv"][0], arrays["conv"][0])
    np.testing.assert_array_equal(loaded["conv"][1], arrays["conv"][1])


def test_torch_file_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(WeightsError, match="not a loadable torch weights file"):
        weights.open_weights(path)


def test_large_blobs_read_in_parallel_chunks_give_the_same_values(monkeypatch):
    path = max(CAFFEMODELS, key=lambda p: p.stat().st_size)
    expected = weights.read_weights(path)
    monkeypatch.setattr(weights, "_PARALLEL_READ_CHUNK", 256)
    monkeypatch.setattr(weights, "_READ_THREADS", 3)
    chunked = weights.read_weights(path)
    assert chunked.keys() == expected.keys()
    for name, arrays in expected.items():
        for ours, theirs in zip(chunked[name], arrays):
            np.testing.assert_array_equal(ours, theirs)


def test_file_shrinking_under_a_chunked_read_is_a_weights_error(tmp_path, monkeypatch):
    source = max(CAFFEMODELS, key=lambda p: p.stat().st_size)
    path = tmp_path / "shrinks.caffemodel"
    path.write_bytes(source.read_bytes())
    monkeypatch.setattr(weights, "_PARALLEL_READ_CHUNK", 256)
    with weights.open_weights(path) as stored:
        blob = max((b for blobs in stored.values() for b in blobs), key=lambda b: b.count)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        with pytest.raises(WeightsError, match="file ended") as err:
            blob.load()
    assert str(path) in str(err.value)
