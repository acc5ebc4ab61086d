"""Bad solver input, bad snapshots, divergence and failing snapshot writes: clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fcnwild.nets.errors import DivergenceError, FcnwildError, SolverError
from fcnwild.solvers import snapshot as snapshot_module
from fcnwild.solvers.snapshot import read_solverstate, write_solverstate
from fcnwild.solvers.solver import Solver
from solver_cases import segmentation_net, solver_text, weights, write, write_hdf5_source

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
