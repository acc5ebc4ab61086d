"""Data layers: Input shapes, DummyData fillers, HDF5Data's row stream."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from caffe_fixture import CaffeCase
from layer_testing import make_layer

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError
from fcnwild.layers.base import LayerContext
from fcnwild.layers.registry import layer_class


def test_input_shapes_once_for_all_tops_or_once_per_top() -> None:
    one = make_layer('name: "in" type: "Input" top: "a" top: "b" '
                     'input_param { shape { dim: 2 dim: 3 } }', [])
    assert one.reshape([]) == [(2, 3), (2, 3)]
    each = make_layer('name: "in" type: "Input" top: "a" top: "b" '
                      'input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } }', [])
    assert each.reshape([]) == [(2, 3), (4,)]


def test_dummy_data_constant_is_fixed_and_gaussian_is_redrawn() -> None:
    layer = make_layer('name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
                       'data_filler { type: "constant" value: 3 } '
                       'data_filler { type: "gaussian" std: 2 } '
                       'shape { dim: 2 dim: 3 } shape { dim: 400 } }', [])
    assert layer.reshape([]) == [(2, 3), (400,)]
    c1, g1 = layer()
    c2, g2 = layer()
    assert torch.equal(c1, torch.full((2, 3), 3.0)) and torch.equal(c1, c2)
    assert not torch.equal(g1, g2)
    assert 1.5 < float(g1.std()) < 2.5


def test_dummy_data_legacy_shape_and_default_zero_filler() -> None:
    layer = make_layer('name: "d" type: "DummyData" top: "x" dummy_data_param { '
                       'num: 2 channels: 3 height: 4 width: 5 }', [])
    (x,) = layer.double()()
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float64 and not x.any()


def _write(path, **datasets) -> None:
    with h5py.File(path, "w") as h5:
        for name, value in datasets.items():
            h5[name] = value


def _hdf5_layer(tmp_path, source: str, batch: int, shuffle: bool = False, phase=caffe_pb2.TRAIN):
    return make_layer(f'name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                      f'source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }}',
                      [], base_dir=tmp_path, phase=phase)


def test_hdf5_data_streams_rows_across_files_and_wraps_around(tmp_path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "h5").mkdir()
    a = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)
    b = 100 + np.arange(2 * 2, dtype=np.float32).reshape(2, 2)
    _write(tmp_path / "h5" / "a.h5", data=a, label=np.arange(4, dtype=np.int32))
    _write(tmp_path / "h5" / "b.h5", data=b, label=np.arange(10, 12, dtype=np.int32))
    # Paths inside the list resolve against the list's folder; the list against base_dir.
    (tmp_path / "lists" / "train.txt").write_text("../h5/a.h5\n\n  ../h5/b.h5\n")
    layer = _hdf5_layer(tmp_path, "lists/train.txt", batch=4)
    assert layer.reshape([]) == [(4, 2), (4,)]
    stream = np.concatenate([a, b])
    labels = np.array([0, 1, 2, 3, 10, 11], dtype=np.float32)
    for step in range(4):
        data, label = layer()
        rows = [(step * 4 + i) % 6 for i in range(4)]
        np.testing.assert_array_equal(data.numpy(), stream[rows])
        np.testing.assert_array_equal(label.numpy(), labels[rows])
        assert data.dtype == torch.float32 and label.dtype == torch.float32
    layer.reset()
    np.testing.assert_array_equal(layer()[0].numpy(), stream[:4])


def test_hdf5_data_shuffle_permutes_rows_within_an_epoch(tmp_path) -> None:
    data = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    _write(tmp_path / "a.h5", data=data, label=np.arange(7, dtype=np.float32))
    (tmp_path / "list.txt").write_text("a.h5\n")
    torch.manual_seed(3)
    layer = _hdf5_layer(tmp_path, "list.txt", batch=7, shuffle=True)
    epochs = [layer()[1].numpy() for _ in range(3)]
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(7))
    assert any(not np.array_equal(e, np.arange(7)) for e in epochs)
    # data and label rows stay paired
    d, lab = layer()
    np.testing.assert_array_equal(d.numpy()[:, 0], lab.numpy())


def test_hdf5_data_reads_the_solver_fixture_batches_like_caffe() -> None:
    case = CaffeCase("solver_sgd_fixed")
    lp = next(lp for lp in case.net_param.layer if lp.type == "HDF5Data")
    layer = layer_class("HDF5Data")(lp, LayerContext(phase=case.phase, base_dir=case.folder))
    layer.setup([])
    with h5py.File(case.folder / "blobs.h5", "r") as h5:
        batches = {k: np.asarray(h5["solver/batches"][k]) for k in ("data", "label")}
    size = case.meta["batch_size"]
    for k in range(len(batches["data"]) // size):
        data, label = layer()
        np.testing.assert_array_equal(data.numpy(), batches["data"][k * size:(k + 1) * size])
        np.testing.assert_array_equal(label.numpy(), batches["label"][k * size:(k + 1) * size])


def test_hdf5_data_follows_the_net_dtype(tmp_path) -> None:
    _write(tmp_path / "a.h5", data=np.ones((3, 2), np.float32), label=np.zeros(3, np.float32))
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))     # absolute path
    layer = _hdf5_layer(tmp_path, "list.txt", batch=2).double()
    assert all(t.dtype == torch.float64 for t in layer())


def test_hdf5_data_later_file_with_other_row_shape_is_refused(tmp_path) -> None:
    _write(tmp_path / "a.h5", data=np.ones((2, 2), np.float32), label=np.zeros(2, np.float32))
    _write(tmp_path / "b.h5", data=np.ones((2, 3), np.float32), label=np.zeros(2, np.float32))
    (tmp_path / "list.txt").write_text("a.h5 b.h5")
    layer = _hdf5_layer(tmp_path, "list.txt", batch=2)
    with pytest.raises(DatasetError, match="earlier files had"):
        layer()      # as Caffe, the next file is loaded as soon as one is used up
