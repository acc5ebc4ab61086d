"""fcnwild.caffe's solvers as pycaffe users drive them: classes, step, callbacks, snapshots."""
from __future__ import annotations

import numpy as np
import pytest

import fcnwild.caffe as caffe
from fcnwild.base import caffe_pb2
from fcnwild.caffe import _caffe
from fcnwild.solvers import create_solver
from solver_cases import segmentation_net, solver_text, write, write_hdf5_source

CLASSES = [("SGD", caffe.SGDSolver), ("Nesterov", caffe.NesterovSolver),
           ("AdaGrad", caffe.AdaGradSolver), ("RMSProp", caffe.RMSPropSolver),
           ("AdaDelta", caffe.AdaDeltaSolver), ("Adam", caffe.AdamSolver)]
_RULE_FIELDS = {"AdaDelta": dict(momentum=0.95, delta=1e-6, base_lr=1.0),
                "Adam": dict(momentum=0.9, momentum2=0.999, base_lr=0.01),
                "RMSProp": dict(rms_decay=0.98, momentum=None),
                "AdaGrad": dict(momentum=None)}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The solver's folder, also the working directory (as FCN's solve.py runs)."""
    monkeypatch.chdir(tmp_path)
    write_hdf5_source(tmp_path, "train", rows=[6], seed=2)
    write_hdf5_source(tmp_path, "val", rows=[4], seed=3)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2,
                                                      test_source="val.txt"))
    return tmp_path


def _solver_file(folder, name="solver.prototxt", **fields):
    return str(write(folder / name, solver_text("net.prototxt", **fields)))


def _params(net) -> dict[str, list[np.ndarray]]:
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("type_name, cls", CLASSES)
def test_each_class_trains_with_its_own_rule_whatever_the_file_says(folder, type_name, cls):
    fields = _RULE_FIELDS.get(type_name, {})
    as_sgd = _solver_file(folder, "as_sgd.prototxt", type="SGD", **fields)
    as_itself = _solver_file(folder, "as_itself.prototxt", type=type_name, **fields)
    solver = cls(as_sgd)
    assert isinstance(solver, cls)
    solver.step(2)
    reference = create_solver(as_itself)
    reference.step(2)
    assert solver.iter == reference.iter == 2
    _assert_same(_params(solver.net), {name: [b.data.copy() for b in blobs] for name, blobs
                                       in reference.net.params.items()})
    assert solver.param.type == type_name


def test_get_solver_follows_the_files_type(folder):
    solver = caffe.get_solver(_solver_file(folder, type="Adam"))
    assert isinstance(solver, caffe.AdamSolver)


def test_manual_forward_backward_apply_update_equals_step(folder):
    path = _solver_file(folder)
    stepped, manual = caffe.SGDSolver(path), caffe.SGDSolver(path)
    stepped.step(2)
    for _ in range(2):
        manual.net.clear_param_diffs()
        manual.net.forward()
        manual.net.backward()
        manual.apply_update()                        # advances iter, as ApplyUpdate does
    assert manual.iter == stepped.iter == 2
    _assert_same(_params(manual.net), _params(stepped.net))


def test_apply_update_is_caffes_sgd_update(folder):
    solver = caffe.SGDSolver(_solver_file(folder, base_lr=0.1, momentum=0.0,
                                          weight_decay=0.01))
    solver.net.forward()
    solver.net.backward()
    weight = solver.net.params["conv1"][0]
    before, diff = weight.data.copy(), weight.diff.copy()
    solver.apply_update()
    np.testing.assert_allclose(weight.data, before - 0.1 * (diff + 0.01 * before),
                               rtol=1e-5, atol=1e-7)


def test_callbacks_run_between_forward_backward_and_the_update(folder):
    solver = caffe.SGDSolver(_solver_file(folder, momentum=0.0, weight_decay=0.0))
    weight = solver.net.params["score"][0]
    events = []

    def on_start():
        events.append(("start", solver.iter))

    def on_gradients_ready():
        assert np.abs(weight.diff).sum() > 0          # backward has run
        events.append(("gradients", solver.iter))
        weight.diff[...] = 0                          # so this param must not move

    before = weight.data.copy()
    solver.add_callback(on_start, on_gradients_ready)
    solver.step(2)
    assert events == [("start", 0), ("gradients", 0), ("start", 1), ("gradients", 1)]
    np.testing.assert_array_equal(weight.data, before)
    fresh = caffe.SGDSolver(_solver_file(folder))     # same seed: the initial weights
    assert not np.array_equal(solver.net.params["conv1"][0].data,
                              fresh.net.params["conv1"][0].data)


def test_snapshot_and_restore_continue_exactly(folder):
    path = _solver_file(folder, snapshot_prefix="snaps/run")
    straight = caffe.SGDSolver(path)
    straight.step(4)
    first = caffe.SGDSolver(path)
    first.step(2)
    assert first.snapshot() is None
    state = folder / "snaps" / "run_iter_2.solverstate"
    assert state.exists() and (folder / "snaps" / "run_iter_2.caffemodel").exists()
    resumed = caffe.SGDSolver(path)
    resumed.restore(str(state))
    assert resumed.iter == 2
    resumed.step(2)
    _assert_same(_params(resumed.net), _params(straight.net))


def test_a_relative_snapshot_prefix_is_relative_to_the_working_directory(folder, tmp_path,
                                                                          monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "snaps").mkdir(parents=True)
    path = _solver_file(folder, snapshot_prefix="run")
    named_dir = _solver_file(folder, "dir_solver.prototxt", snapshot_prefix="snaps")
    monkeypatch.chdir(elsewhere)
    caffe.SGDSolver(path).snapshot()
    caffe.SGDSolver(named_dir).snapshot()             # a directory gets the file's stem
    assert (elsewhere / "run_iter_0.caffemodel").exists()
    assert (elsewhere / "snaps" / "dir_solver_iter_0.solverstate").exists()
    unset = _solver_file(folder, "unset.prototxt", snapshot_prefix=None)
    caffe.SGDSolver(unset).snapshot()                 # unset: beside the solver file
    assert (folder / "unset_iter_0.caffemodel").exists()


def test_solve_trains_to_max_iter(folder):
    solver = caffe.SGDSolver(_solver_file(folder, max_iter=3, snapshot_prefix="s/run"))
    solver.solve()
    assert solver.iter == 3 and (folder / "s" / "run_iter_3.caffemodel").exists()


def test_net_and_test_nets_are_views_of_the_solvers_nets(folder):
    solver = caffe.SGDSolver(_solver_file(folder, test_iter=[2], test_interval=100))
    assert solver.net is solver.net and isinstance(solver.net, caffe.Net)
    (test_net,) = solver.test_nets
    assert isinstance(test_net, caffe.Net)
    assert np.shares_memory(test_net.params["conv1"][0].data, solver.net.params["conv1"][0].data)
    solver.net.params["score"][1].data[...] = 5.0
    test_net.share_with(solver.net)
    np.testing.assert_array_equal(test_net.params["score"][1].data, 5.0)
    loss = test_net.forward()["loss"]
    assert loss.shape == () and np.isfinite(loss)
    solver.step(1)
    assert not np.array_equal(test_net.params["score"][1].data, 5.0)   # still shared


def test_param_is_a_copy_of_the_solver_parameter(folder):
    solver = caffe.SGDSolver(_solver_file(folder, base_lr=0.05))
    param = solver.param
    assert isinstance(param, caffe_pb2.SolverParameter) and param.max_iter == 6
    param.base_lr = 100.0
    assert solver.param.base_lr == pytest.approx(0.05)


def test_multi_process_solvers_are_refused(folder, monkeypatch):
    monkeypatch.setitem(_caffe._state, "solver_count", 2)
    with pytest.raises(NotImplementedError, match="set_solver_count"):
        caffe.SGDSolver(_solver_file(folder))


def test_solver_and_its_nets_follow_a_device_change_once(folder, monkeypatch):
    solver = caffe.SGDSolver(_solver_file(folder))
    moves = []
    monkeypatch.setattr(solver._solver, "to", moves.append)
    monkeypatch.setattr(_caffe, "_state", dict(_caffe._state))
    held = solver.net.blobs["conv1"].data             # a view: pins the blob
    _caffe._set("device_id", 5)                       # what set_device(5) records
    solver.net.forward()                              # through a net view: the solver moves
    solver.step(1)
    assert moves == [_caffe.device()]
    assert not solver._solver.net.blobs["conv1"].pinned and held.shape == (2, 4, 4, 4)
