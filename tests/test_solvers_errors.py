"""Bad solver input, bad snapshots, divergence and failing snapshot writes: clear errors."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fuzz_harness import memory_cap
from solver_cases import (
    segmentation_net,
    solver_text,
    weights,
    write,
    write_hdf5_source,
)

from fcnwild.base import atomic as atomic_module
from fcnwild.base.errors import DivergenceError, FcnwildError, SolverError
from fcnwild.nets import wire
from fcnwild.solvers import snapshot as snapshot_module
from fcnwild.solvers.snapshot import (
    latest_snapshot,
    list_snapshots,
    read_solverstate,
    write_solverstate,
)
from fcnwild.solvers.solver import Solver

STATE_SUFFIX = {"BINARYPROTO": ".solverstate", "HDF5": ".solverstate.h5"}
MODEL_SUFFIX = {"BINARYPROTO": ".caffemodel", "HDF5": ".caffemodel.h5"}


@pytest.fixture
def folder(tmp_path) -> Path:
    write_hdf5_source(tmp_path, "train", rows=[8], seed=4)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2))
    return tmp_path


def _solver_file(folder: Path, name: str = "solver.prototxt", net: str = "net.prototxt",
                 **fields) -> Path:
    return write(folder / name, solver_text(net, **fields))


def _trained_snapshot(folder: Path, fmt: str = "BINARYPROTO", **fields) -> Path:
    solver = Solver(_solver_file(folder, snapshot_format=fmt, max_iter=2, snapshot=2, **fields))
    solver.solve()
    return solver.last_snapshot[1]


# ------------------------------------------------------------------ solver files
@pytest.mark.parametrize("fields, expected", [
    (dict(type="Adamax"), "unknown solver type 'Adamax'"),
    (dict(type="AdaGrad", momentum=0.9), "momentum cannot be used with AdaGrad"),
    (dict(type="RMSProp", momentum=0.9), "momentum cannot be used with RMSProp"),
    (dict(lr_policy="cosine"), "unknown lr_policy 'cosine'"),
    (dict(train_net="net.prototxt"), "train net more than once"),
    (dict(test_net=["net.prototxt", "net.prototxt"], test_iter=[2], test_interval=2),
     "test_iter is given 1 times for 2 test nets"),
    (dict(net=None, train_net="net.prototxt", test_net="net.prototxt", test_iter=[2, 2],
          test_interval=2), "test_iter is given 2 times for 1 test nets"),
])
def test_bad_solver_parameters_name_the_solver_file(folder, fields, expected):
    path = _solver_file(folder, **fields)
    with pytest.raises(SolverError, match=expected) as info:
        Solver(path)
    assert info.value.file == str(path)


def test_v1_solver_type_enum_is_checked_like_type(folder):
    path = _solver_file(folder, solver_type="ADAGRAD", momentum=0.9, type=None)
    with pytest.raises(SolverError, match="momentum cannot be used with AdaGrad"):
        Solver(path)


def test_missing_net_file_is_named(folder):
    with pytest.raises(FcnwildError) as info:
        Solver(_solver_file(folder, net="nets/missing.prototxt"))
    assert str(folder / "nets" / "missing.prototxt") in str(info.value)


# ------------------------------------------------------------------ restoring
def test_snapshot_of_another_solver_type_is_refused(folder):
    state = _trained_snapshot(folder)                       # SGD: 4 history blobs
    adam = Solver(_solver_file(folder, "adam.prototxt", type="Adam"))
    with pytest.raises(SolverError, match="holds 4 history blobs but this Adam solver has 8") \
            as info:
        adam.restore(state)
    assert info.value.file == str(state)


def test_snapshot_of_another_net_is_refused_before_anything_changes(folder):
    state = _trained_snapshot(folder)
    write(folder / "wide.prototxt", segmentation_net("train.txt", batch=2, classes=5))
    other = Solver(_solver_file(folder, "wide_solver.prototxt", net="wide.prototxt"))
    history = [h.clone() for h in other.rule.history]
    with pytest.raises(SolverError, match=r"history blob 2 has shape \(3, 4, 1, 1\)") as info:
        other.restore(state)
    assert info.value.file == str(state)
    assert other.iter == 0 and all(bool((a == b).all()) for a, b in
                                   zip(history, other.rule.history))


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_solverstate_is_a_solver_error_naming_the_file(folder, fmt, damage):
    state = _trained_snapshot(folder, fmt)
    data = state.read_bytes()
    bad = state.with_name("bad" + STATE_SUFFIX[fmt])
    bad.write_bytes({"truncated": data[:len(data) // 3], "garbage": bytes(range(256)) * 8,
                     "empty": b""}[damage])
    with pytest.raises(SolverError) as info:
        Solver(_solver_file(folder, snapshot_format=fmt)).restore(bad)
    assert info.value.file == str(bad)


def test_hdf5_solverstate_with_a_damaged_history_dataset(folder):
    state = _trained_snapshot(folder, "HDF5")
    with h5py.File(state, "a") as h5:
        del h5["history/1"]
        h5["history/1"] = np.array([b"not numbers"])
    with pytest.raises(SolverError, match="history blob 1") as info:
        Solver(_solver_file(folder, snapshot_format="HDF5")).restore(state)
    assert info.value.file == str(state)


def _rewrite_resume_state(state: Path, edit) -> Path:
    out = state.with_name("edited.solverstate")
    with read_solverstate(state) as stored:
        write_solverstate(out, stored.iter, stored.learned_net, stored.current_step,
                          [h.load() for h in stored.history], edit(stored.resume_state))
    return out


def test_damaged_resume_extension_is_a_solver_error(folder):
    state = _rewrite_resume_state(_trained_snapshot(folder), lambda text: text[:len(text) // 2])
    with pytest.raises(SolverError, match="resume state is damaged") as info:
        Solver(_solver_file(folder)).restore(state)
    assert info.value.file == str(state)


def test_data_position_for_another_source_list_is_refused(folder):
    state = _trained_snapshot(folder)
    write_hdf5_source(folder, "other", rows=[3, 3], seed=9)    # two files instead of one
    write(folder / "other.prototxt", segmentation_net("other.txt", batch=2))
    solver = Solver(_solver_file(folder, "other_solver.prototxt", net="other.prototxt"))
    with pytest.raises(SolverError, match="list of 1 files; this list names 2") as info:
        solver.restore(state)
    assert info.value.file == str(state)


def test_resume_extension_is_plain_json_with_rng_and_positions(folder):
    with read_solverstate(_trained_snapshot(folder)) as state:
        extra = json.loads(state.resume_state)
    assert set(extra) == {"rng", "data_positions"}
    assert set(extra["rng"][0]) == {"torch", "numpy"}
    assert extra["data_positions"] == {"train": {"data": {
        "file_order": [0], "current_file": 0, "row_order": list(range(8)), "current_row": 4,
        "offset": 4}}, "test": []}


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_nan_loss_stops_with_the_last_good_state_saved(tmp_path, fmt):
    source = write_hdf5_source(tmp_path, "train", rows=[12], seed=4)
    with h5py.File(tmp_path / "train_0.h5", "a") as h5:
        h5["data"][7, 1, 2, 3] = np.nan          # batch of rows 6-7 = iteration 3
    write(tmp_path / "net.prototxt", segmentation_net(source.name, batch=2))
    path = _solver_file(tmp_path, snapshot_format=fmt, max_iter=6, snapshot=2)
    solver = Solver(path)
    with pytest.raises(DivergenceError) as info:
        solver.solve()
    model = tmp_path / f"snapshots/run_iter_3{MODEL_SUFFIX[fmt]}"
    state = tmp_path / f"snapshots/run_iter_3{STATE_SUFFIX[fmt]}"
    err = info.value
    assert err.iteration == 3 and err.file == str(path)
    assert "loss is nan" in str(err) and "blob 'data'" in str(err)
    assert str(model) in str(err) and str(state) in str(err)
    # The snapshot holds the weights after 3 good updates (iteration 3's was never applied).
    saved = weights(model)
    for name, blobs in saved.items():
        for i, blob in enumerate(blobs):
            assert np.isfinite(blob).all()
            assert np.array_equal(blob, solver.net.params[name][i].data)
    fresh = Solver(path)
    fresh.restore(state)
    assert fresh.iter == 3
    assert (tmp_path / f"snapshots/run_iter_2{MODEL_SUFFIX[fmt]}").is_file()


# ------------------------------------------------------------------ failing snapshot writes
def _snapshot_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_unwritable_snapshot_prefix_is_a_solver_error_and_keeps_earlier_snapshots(folder):
    solver = Solver(_solver_file(folder, max_iter=4, snapshot=2))
    solver.step(2)
    before = _snapshot_files(folder / "snapshots")
    (folder / "blocker").write_text("a regular file, not a folder")
    solver.param.snapshot_prefix = str(folder / "blocker" / "run")
    with pytest.raises(SolverError, match="cannot write snapshot run_iter_4.caffemodel") as info:
        solver.step(2)
    assert info.value.iteration == 4 and "blocker" in info.value.file
    assert _snapshot_files(folder / "snapshots") == before


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("crash", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_solverstate_write_leaves_no_file_under_the_final_name(
        folder, monkeypatch, fmt, crash):
    solver = Solver(_solver_file(folder, snapshot_format=fmt, max_iter=4, snapshot=2))
    solver.step(2)
    before = _snapshot_files(folder / "snapshots")
    # Fail after the solver state file got its iteration and first history blob.
    if fmt == "BINARYPROTO":
        calls = []
        framing = snapshot_module.blob_framing

        def failing_framing(array):
            calls.append(1)
            if len(calls) == 2:
                raise crash
            return framing(array)
        monkeypatch.setattr(snapshot_module, "blob_framing", failing_framing)
    else:
        create = h5py.Group.create_dataset

        def failing_create(group, name, *args, **kwargs):
            if group.name == "/history" and name == "1":
                raise crash
            return create(group, name, *args, **kwargs)
        monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(SolverError if isinstance(crash, OSError) else KeyboardInterrupt):
        solver.step(2)
    after = _snapshot_files(folder / "snapshots")
    assert f"run_iter_4{STATE_SUFFIX[fmt]}" not in after
    assert not [name for name in after if name.startswith(".")]      # no temporary left over
    assert {k: v for k, v in after.items() if "iter_2" in k} == before


# ------------------------------------------------------------------ more divergence
_POWER_NET = """name: "power"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "train.txt" batch_size: 2 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 1 bias_filler { type: "constant" value: 0 } } }
layer { name: "sqrt" type: "Power" bottom: "conv1" top: "sqrt" power_param { power: 0.5 } }
layer { name: "score" type: "Convolution" bottom: "sqrt" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_nan_gradient_under_a_finite_loss_stops_with_the_last_good_state(tmp_path):
    """sqrt of an all-zero conv1 output: a finite loss, Caffe's slope power * y / x = 0/0,
    NaN diffs."""
    write_hdf5_source(tmp_path, "train", rows=[8], seed=4)
    with h5py.File(tmp_path / "train_0.h5", "a") as h5:
        h5["data"][...] = np.abs(h5["data"][()])
        h5["data"][4:6] = 0.0                    # the batch of iteration 2
    write(tmp_path / "net.prototxt", _POWER_NET)
    path = _solver_file(tmp_path, max_iter=4, snapshot=1, base_lr=1e-4, weight_decay=0.0)
    solver = Solver(path)
    solver.net.params["conv1"][0].data[...] = 0.5   # stays positive: sqrt(x > 0) elsewhere
    with pytest.raises(DivergenceError) as info:
        solver.solve()
    err = info.value
    assert err.iteration == 2 and err.file == str(path)
    assert "a gradient is not finite" in str(err)
    assert "first non-finite diff in param 0 of layer 'conv1'" in str(err)
    state = tmp_path / "snapshots/run_iter_2.solverstate"
    assert str(state) in str(err)
    with read_solverstate(state) as saved:
        assert all(np.isfinite(h.load()).all() for h in saved.history)
    for blobs in weights(tmp_path / "snapshots/run_iter_2.caffemodel").values():
        assert all(np.isfinite(b).all() for b in blobs)


def test_infinite_update_is_never_applied_nor_snapshotted(folder):
    """lr_policy step with gamma inf: the rate becomes inf at iteration 3 (a C double
    overflow, not a Python exception), so the update would be inf/NaN."""
    path = _solver_file(folder, max_iter=6, snapshot=2, lr_policy="step", stepsize=3,
                        gamma=float("inf"))
    solver = Solver(path)
    with pytest.raises(DivergenceError) as info:
        solver.solve()
    err = info.value
    assert err.iteration == 3 and "the update rule produced a non-finite update" in str(err)
    # every update is inf; diffs are searched in backward order, so the last layer is named
    assert "first non-finite diff in param 0 of layer 'score'" in str(err)
    assert "no snapshot was written; the last good state is the snapshot of iteration 2" in str(err)
    assert str(folder / "snapshots/run_iter_2.solverstate") in str(err)
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == [
        "run_iter_2.caffemodel", "run_iter_2.solverstate"]
    assert all(np.isfinite(p.data).all() for blobs in solver.net.params.values() for p in blobs)


def test_weights_blown_up_before_the_nan_are_not_called_the_last_good_state(folder):
    """A rate growing 4x per iteration: the weights grow by orders of magnitude for some iterations, still
    finite, before the loss overflows. The last good state is the last snapshot whose
    weights stayed within GROWTH_LIMIT of the one before, and the message says which."""
    path = _solver_file(folder, max_iter=60, snapshot=1, base_lr=1e-2, lr_policy="exp", gamma=4.0,
                        weight_decay=0.0)
    solver = Solver(path)
    scales = {}
    solver.hooks.append(lambda s, loss: scales.__setitem__(
        s.iter, max(np.abs(p.data).max() for blobs in s.net.params.values() for p in blobs)))
    start = max(np.abs(p.data).max() for blobs in solver.net.params.values() for p in blobs)
    with pytest.raises(DivergenceError) as info:
        solver.solve()
    err = str(info.value)
    good = solver.last_good[0]
    # Every snapshot up to the last good one grew less than 100x (or stayed below 100).
    previous = start
    for iteration in range(1, good + 1):
        assert scales[iteration] <= 100 * max(previous, 1.0)
        previous = scales[iteration]
    later = [scales[i] for i in range(good + 1, max(scales) + 1)]
    assert later and max(later) > 100 * max(scales[good], 1.0)
    assert f"the last good state is the snapshot of iteration {good}" in err
    assert str(folder / f"snapshots/run_iter_{good}.caffemodel") in err
    saved = weights(folder / f"snapshots/run_iter_{good}.caffemodel")
    assert max(np.abs(b).max() for blobs in saved.values() for b in blobs) == pytest.approx(scales[good])


def test_nan_weights_load_and_training_names_the_first_bad_layer(folder):
    path = _solver_file(folder, max_iter=2, snapshot=1)
    source = Solver(path)
    source.net.params["score"][0].data[0, 0] = np.nan
    source.net.save(folder / "nan.caffemodel")
    solver = Solver(path)
    solver.net.copy_from(folder / "nan.caffemodel")          # NaN weights are valid data
    with pytest.raises(DivergenceError) as info:
        solver.solve()
    err = info.value
    assert err.iteration == 0 and "loss is nan" in str(err)
    assert "first non-finite value in param 0 of layer 'score'" in str(err)
    assert "the weights are no longer finite, so no snapshot was written" in str(err)
    assert not (folder / "snapshots").exists()


def test_non_finite_weights_are_never_snapshotted(folder):
    solver = Solver(_solver_file(folder))
    solver.net.params["conv1"][1].data[2] = np.inf
    with pytest.raises(DivergenceError, match="the parameters are not finite; first "
                       "non-finite value in param 1 of layer 'conv1'"):
        solver.snapshot()
    assert not (folder / "snapshots").exists()


# ------------------------------------------------------------------ disk full, no permission
class _FullDisk:
    """A file object whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


def _disk_fills_up_after(monkeypatch, room: int, nth_file: int) -> None:
    """The ``nth_file``-th file opened by atomic writes (0: the weights, 1: the solver
    state) gets ``room`` bytes before the disk is full."""
    fdopen, opened = os.fdopen, []

    def full_fdopen(fd, *args, **kwargs):
        file = fdopen(fd, *args, **kwargs)
        opened.append(fd)
        return _FullDisk(file, room) if len(opened) - 1 == nth_file else file
    monkeypatch.setattr(atomic_module.os, "fdopen", full_fdopen)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("nth_file", [0, 1], ids=["weights", "state"])
def test_disk_full_while_snapshotting_keeps_the_previous_snapshot(folder, monkeypatch, fmt,
                                                                   nth_file):
    solver = Solver(_solver_file(folder, snapshot_format=fmt, max_iter=4, snapshot=2))
    solver.step(2)
    before = _snapshot_files(folder / "snapshots")
    _disk_fills_up_after(monkeypatch, 300, nth_file)
    with pytest.raises(SolverError) as info:
        solver.step(2)
    failed = (MODEL_SUFFIX if nth_file == 0 else STATE_SUFFIX)[fmt]
    err = info.value
    assert type(err) is SolverError and err.iteration == 4
    assert err.file == str(folder / f"snapshots/run_iter_4{failed}")
    assert f"cannot write snapshot run_iter_4{failed}: No space left on device; no snapshot " \
           "of iteration 4 was kept" in str(err)
    assert _snapshot_files(folder / "snapshots") == before      # no weights without a state
    monkeypatch.undo()
    assert latest_snapshot(folder / "snapshots/run") == \
        folder / f"snapshots/run_iter_2{STATE_SUFFIX[fmt]}"


def test_permission_denied_while_snapshotting(folder, monkeypatch):
    solver = Solver(_solver_file(folder, max_iter=4, snapshot=2))
    solver.step(2)
    before = _snapshot_files(folder / "snapshots")

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
    monkeypatch.setattr(atomic_module.tempfile, "mkstemp", refused)
    with pytest.raises(SolverError, match="cannot write snapshot run_iter_4.caffemodel: "
                       "Permission denied") as info:
        solver.step(2)
    assert info.value.file == str(folder / "snapshots/run_iter_4.caffemodel")
    assert _snapshot_files(folder / "snapshots") == before


# ------------------------------------------------------------------ the newest complete snapshot
def _snapshots(folder: Path, fmt: str = "BINARYPROTO") -> Solver:
    solver = Solver(_solver_file(folder, snapshot_format=fmt, max_iter=6, snapshot=2))
    solver.solve()
    return solver


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_latest_snapshot_skips_weights_without_a_state(folder, fmt):
    _snapshots(folder, fmt)
    (folder / f"snapshots/run_iter_6{STATE_SUFFIX[fmt]}").unlink()   # killed between the two
    prefix = folder / "snapshots/run"
    assert list_snapshots(prefix) == [folder / f"snapshots/run_iter_{i}{STATE_SUFFIX[fmt]}"
                                      for i in (4, 2)]
    assert latest_snapshot(prefix) == folder / f"snapshots/run_iter_4{STATE_SUFFIX[fmt]}"
    assert latest_snapshot(folder / "elsewhere/run") is None


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("damage", ["truncated state", "truncated weights", "missing weights"])
def test_damaged_newest_snapshot_is_reported_and_skipped_only_on_request(folder, fmt, damage):
    _snapshots(folder, fmt)
    state = folder / f"snapshots/run_iter_6{STATE_SUFFIX[fmt]}"
    model = folder / f"snapshots/run_iter_6{MODEL_SUFFIX[fmt]}"
    if damage == "missing weights":
        model.unlink()
    else:
        target = state if damage == "truncated state" else model
        target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])
    prefix = folder / "snapshots/run"
    with pytest.raises(SolverError, match="newest snapshot under") as info:
        latest_snapshot(prefix)
    assert type(info.value) is SolverError and info.value.file == str(state)
    if damage != "truncated state":
        assert "weights file" in str(info.value)
    assert latest_snapshot(prefix, fallback=True) == \
        folder / f"snapshots/run_iter_4{STATE_SUFFIX[fmt]}"


def test_train_resumes_from_the_latest_snapshot_and_falls_back_only_when_asked(folder, caplog):
    from fcnwild.tools import train_cmd
    path = _solver_file(folder, max_iter=6, snapshot=2)
    _snapshots(folder)
    state6 = folder / "snapshots/run_iter_6.solverstate"
    state6.write_bytes(state6.read_bytes()[:40])
    stale = folder / "snapshots/.run_iter_8.caffemodel.abc123.tmp"
    stale.write_bytes(b"left by a kill")
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    with pytest.raises(SolverError, match="newest snapshot") as info:
        train_cmd.run(parser.parse_args(["--solver", str(path), "--snapshot", "latest",
                                         "--quiet"]))
    assert info.value.file == str(state6)
    assert not stale.exists()
    with caplog.at_level(logging.INFO):
        assert train_cmd.run(parser.parse_args(["--solver", str(path), "--snapshot", "latest",
                                                "--snapshot-fallback", "--quiet"])) == 0
    assert "Skipping damaged snapshot" in caplog.text
    assert f"Restoring previous solver status from {folder / 'snapshots/run_iter_4.solverstate'}" \
        in caplog.text
    assert read_solverstate(state6).iter == 6        # rewritten whole by the resumed run


# ------------------------------------------------------------------ more damaged solver states
def _binary_state(path: Path, *fields: bytes) -> Path:
    path.write_bytes(b"".join(fields))
    return path


@pytest.mark.parametrize("fields, match", [
    ([wire.key(1, wire.VARINT) + wire.encode_varint(2**64 - 1)], "iter is 18446744073709551615"),
    ([wire.length_prefix(2, 2) + b"\xff\xfe"], "a text field is not UTF-8"),
    ([wire.length_prefix(3, 2**40) + b"\x00"], "corrupted or truncated solver state"),
])
def test_binary_solverstate_with_lying_fields(tmp_path, fields, match):
    path = _binary_state(tmp_path / "bad.solverstate", *fields)
    with pytest.raises(SolverError, match=match) as info:
        read_solverstate(path)
    assert info.value.file == str(path)


@pytest.mark.parametrize("edit, match", [
    (lambda h5: (h5.__delitem__("history/0"),
                 h5.create_dataset("history/0", shape=(2**40,), dtype="f4")),
     r"history blob 0 declares shape \(1099511627776,\)"),
    (lambda h5: (h5.__delitem__("iter"), h5.create_dataset("iter", data=np.bytes_(b"3"))),
     "'iter' must be a dataset of one value, an integer"),
    (lambda h5: (h5.__delitem__("iter"), h5.create_dataset("iter", shape=(10**9,), dtype="i4")),
     "'iter' must be a dataset of one value"),
    (lambda h5: (h5.__delitem__("history"),
                 h5.create_dataset("history", shape=(10**9,), dtype="f4")),
     "'history' must be a group"),
])
def test_hdf5_solverstate_with_lying_datasets(folder, edit, match):
    state = _trained_snapshot(folder, "HDF5")
    with h5py.File(state, "a") as h5:
        edit(h5)
    with memory_cap(), pytest.raises(SolverError, match=match) as info:
        Solver(_solver_file(folder, snapshot_format="HDF5")).restore(state)
    assert info.value.file == str(state)


def test_snapshot_naming_missing_weights_is_refused(folder):
    state = _trained_snapshot(folder)
    (state.parent / "run_iter_2.caffemodel").unlink()
    with pytest.raises(SolverError, match="weights file 'run_iter_2.caffemodel' does not "
                       "exist") as info:
        Solver(_solver_file(folder)).restore(state)
    assert info.value.file == str(state)


@pytest.mark.parametrize("edit", [
    lambda extra: {**extra, "data_positions": []},
    lambda extra: {**extra, "rng": [{"torch": "AAAA", "numpy": ["MT19937", [1] * 3, 0, 0, 0.0]}]},
    lambda extra: {**extra, "rng": [{"torch": extra["rng"][0]["torch"], "numpy": 10**30}]},
])
def test_resume_extension_with_values_of_the_wrong_type(folder, edit):
    state = _rewrite_resume_state(_trained_snapshot(folder),
                                  lambda text: json.dumps(edit(json.loads(text))))
    with pytest.raises(SolverError, match="resume state is damaged") as info:
        Solver(_solver_file(folder)).restore(state)
    assert info.value.file == str(state)


def test_finiteness_is_exact_when_finite_values_overflow_their_sum():
    from fcnwild.solvers.solver import _all_finite
    huge = torch.full((4,), 3e38)                 # finite, but the float32 sum is inf
    assert _all_finite([huge, torch.ones(3)])
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensor = torch.ones(5)
        tensor[3] = bad
        assert not _all_finite([huge, tensor])
        assert not _all_finite([tensor])
