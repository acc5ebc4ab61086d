"""Solvers against Caffe's recorded trajectories: weights after every iteration and the loss."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from caffe_fixture import assert_close

from fcnwild.nets.reference import tolerances_of
from fcnwild.solvers.solver import Solver

CAFFE = Path(__file__).parent / "fixtures" / "caffe_reference"
TRAJECTORY_CASES = sorted(p.name for p in CAFFE.glob("solver_*")
                          if not p.name.startswith("solver_snapshot_resume"))
RESUME_CASES = sorted(p.name for p in CAFFE.glob("solver_snapshot_resume_*"))


def assert_weights(solver: Solver, reference: h5py.Group, meta: dict, what: str) -> None:
    tolerance = tolerances_of(meta)["weights_per_iter"]
    for layer, blobs in reference.items():
        for index, ref in blobs.items():
            assert_close(solver.net.params[layer][int(index)].data, ref[()], "weights",
                         tolerance, name=f"{what}: {layer}/{index}")


def make_solver(case: Path, tmp_path: Path) -> Solver:
    solver = Solver(case / "solver.prototxt")
    solver.param.snapshot_prefix = str(tmp_path / "snapshot")
    return solver


@pytest.mark.parametrize("name", TRAJECTORY_CASES)
def test_trajectory_matches_caffe(name, tmp_path, device):
    case = CAFFE / name
    meta = json.loads((case / "meta.json").read_text())
    ref = h5py.File(case / "blobs.h5", "r")
    solver = make_solver(case, tmp_path)
    solver.net.copy_from(case / "weights.caffemodel")
    solver.to(device)
    assert_weights(solver, ref["solver/iter_0"], meta, "initial weights")
    losses = []
    solver.hooks.append(lambda s, loss: losses.append(loss))
    loss_tolerance = tolerances_of(meta)["loss"]
    for k in range(1, meta["iterations"] + 1):
        solver.step(1)
        assert_weights(solver, ref[f"solver/iter_{k}"], meta, f"{name} after iteration {k}")
        expected = float(ref["solver/loss"][k - 1])
        assert_close(losses[-1], expected, "loss", loss_tolerance, name=f"{name} loss {k}")


@pytest.mark.parametrize("name", RESUME_CASES)
def test_restoring_caffes_snapshot_continues_caffes_run(name, tmp_path):
    case = CAFFE / name
    meta = json.loads((case / "meta.json").read_text())
    ref = h5py.File(case / "blobs.h5", "r")
    solver = make_solver(case, tmp_path)
    solver.restore(case / meta["snapshot_files"]["solverstate"])
    assert solver.iter == 3
    assert_weights(solver, ref["solver/iter_3"], meta, "restored weights")
    for k in range(4, 7):
        solver.step(1)
        assert_weights(solver, ref[f"solver/iter_{k}"], meta, f"resumed iteration {k}")
        assert_weights(solver, ref[f"straight/iter_{k}"], meta, f"straight iteration {k}")


@pytest.mark.parametrize("name", RESUME_CASES)
def test_our_snapshot_has_caffes_layout(name, tmp_path):
    case = CAFFE / name
    meta = json.loads((case / "meta.json").read_text())
    solver = make_solver(case, tmp_path)
    solver.net.copy_from(case / "weights.caffemodel")
    solver.step(3)   # snapshot: 3 in the solver file
    model, state = solver.last_snapshot
    assert model.name == meta["snapshot_files"]["model"]
    assert state.name == meta["snapshot_files"]["solverstate"]
    ours_state, caffe_state = state, case / meta["snapshot_files"]["solverstate"]
    if state.suffix == ".h5":
        with h5py.File(ours_state, "r") as a, h5py.File(caffe_state, "r") as b:
            assert set(b.keys()) <= set(a.keys())
            for key in ("iter", "current_step"):
                assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype
                assert a[key][()].tolist() == b[key][()].tolist()
            assert a["learned_net"][()].rstrip(b"\0") == b["learned_net"][()].rstrip(b"\0")
            assert sorted(a["history"]) == sorted(b["history"])
            for key in b["history"]:
                assert_close(a["history"][key][()], b["history"][key][()], "history",
                             tolerances_of(meta)["weights_per_iter"], name=f"history {key}")
    else:
        from fcnwild.base import caffe_pb2
        from fcnwild.nets.prototxt import read_binary
        ours = read_binary(ours_state, caffe_pb2.SolverState())
        caffe = read_binary(caffe_state, caffe_pb2.SolverState())
        assert (ours.iter, ours.current_step, ours.learned_net) == \
            (caffe.iter, caffe.current_step, caffe.learned_net)
        assert len(ours.history) == len(caffe.history)
        for i, (a, b) in enumerate(zip(ours.history, caffe.history)):
            assert list(a.shape.dim) == list(b.shape.dim)
            assert_close(np.array(a.data), np.array(b.data), "history",
                         tolerances_of(meta)["weights_per_iter"], name=f"history {i}")
