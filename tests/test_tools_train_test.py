"""``fcnwild train`` and ``fcnwild test`` end to end, run in-process through their verb modules."""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from fcnwild.nets.net import Net
from fcnwild.tools import test_cmd, train_cmd
from solver_cases import segmentation_net, solver_text, weights, write, write_hdf5_source


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture
def folder(tmp_path) -> Path:
    write_hdf5_source(tmp_path, "train", rows=[7], seed=21)
    write_hdf5_source(tmp_path, "test", rows=[3], seed=22)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2,
                                                      test_source="test.txt"))
    return tmp_path


def test_train_logs_like_caffe_and_writes_snapshots(folder, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    solver = write(folder / "solver.prototxt", solver_text(
        "net.prototxt", max_iter=4, snapshot=2, display=2, test_iter=1, test_interval=2))
    assert _run(train_cmd, ["--solver", str(solver), "--quiet"]) == 0
    log = caplog.text
    for pattern in [r"Iteration 0, Testing net \(#0\)",
                    r"Test net output #0: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)",
                    r"Iteration 0 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.]+",
                    r"Train net output #0: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)",
                    r"Iteration 2, Testing net \(#0\)", r"Iteration 2 \(",
                    r"Snapshotting to \S+run_iter_2.caffemodel and \S+run_iter_2.solverstate",
                    r"Iteration 4, loss = [\d.]+", r"Iteration 4, Testing net \(#0\)",
                    r"Optimization done; last snapshot \S+run_iter_4.caffemodel"]:
        assert re.search(pattern, log), pattern
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == [
        "run_iter_2.caffemodel", "run_iter_2.solverstate",
        "run_iter_4.caffemodel", "run_iter_4.solverstate"]


def test_weights_files_are_copied_in_the_order_given(folder):
    full = Net(folder / "net.prototxt", phase="train")
    full.params["conv1"][0].data = np.full((4, 3, 3, 3), 1.0, np.float32)
    full.params["score"][0].data = np.full((3, 4, 1, 1), 2.0, np.float32)
    full.save(folder / "a.caffemodel")
    head = write(folder / "head.prototxt", """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 4 dim: 4 } } }
layer { name: "score" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 3 kernel_size: 1 } }""")
    partial = Net(head)
    partial.params["score"][0].data = np.full((3, 4, 1, 1), 3.0, np.float32)
    partial.params["score"][1].data = np.full((3,), -1.0, np.float32)
    partial.save(folder / "b.caffemodel")
    solver = write(folder / "solver.prototxt", solver_text("net.prototxt", max_iter=0))
    weights_arg = f"{folder / 'a.caffemodel'},{folder / 'b.caffemodel'}"
    assert _run(train_cmd, ["--solver", str(solver), "--weights", weights_arg, "--quiet"]) == 0
    saved = weights(folder / "snapshots/run_iter_0.caffemodel")
    assert (saved["conv1"][0] == 1.0).all()                  # only in a
    assert (saved["score"][0] == 3.0).all() and (saved["score"][1] == -1.0).all()  # b wins


def test_snapshot_resumes_training_where_it_stopped(folder, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    straight = write(folder / "straight.prototxt", solver_text(
        "net.prototxt", max_iter=4, snapshot=2, snapshot_prefix="straight/run"))
    resumed = write(folder / "resumed.prototxt", solver_text(
        "net.prototxt", max_iter=4, snapshot=2, snapshot_prefix="resumed/run"))
    assert _run(train_cmd, ["--solver", str(straight), "--quiet"]) == 0
    state = folder / "straight/run_iter_2.solverstate"
    assert _run(train_cmd, ["--solver", str(resumed), "--snapshot", str(state), "--quiet"]) == 0
    assert f"Restoring previous solver status from {state}" in caplog.text
    assert sorted(p.name for p in (folder / "resumed").iterdir()) == \
        ["run_iter_4.caffemodel", "run_iter_4.solverstate"]
    a, b = weights(folder / "straight/run_iter_4.caffemodel"), \
        weights(folder / "resumed/run_iter_4.caffemodel")
    assert all(np.array_equal(x, y) for name in a for x, y in zip(a[name], b[name]))


def test_weights_and_snapshot_together_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--solver", "s.prototxt", "--weights", "w.caffemodel",
                           "--snapshot", "s.solverstate"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_test_prints_the_mean_of_every_output_over_the_iterations(tmp_path, capsys):
    rng = np.random.RandomState(5)
    x = rng.randn(5, 3).astype(np.float32)
    target = rng.randn(5, 2).astype(np.float32)
    cls = rng.randint(0, 2, 5).astype(np.float32)
    with h5py.File(tmp_path / "rows.h5", "w") as h5:
        h5["x"], h5["target"], h5["cls"] = x, target, cls
    write(tmp_path / "rows.txt", "rows.h5\n")
    model = write(tmp_path / "model.prototxt", """
layer { name: "data" type: "HDF5Data" top: "x" top: "target" top: "cls"
  hdf5_data_param { source: "rows.txt" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "cls" top: "accuracy" }""")
    w, b = rng.randn(2, 3).astype(np.float32), rng.randn(2).astype(np.float32)
    net = Net(model)
    net.params["ip"][0].data, net.params["ip"][1].data = w, b
    net.save(tmp_path / "model.caffemodel")

    assert _run(test_cmd, ["--model", str(model), "--weights",
                           str(tmp_path / "model.caffemodel"), "--iterations", "3"]) == 0
    printed = dict(re.findall(r"^(\w+) = (\S+)", capsys.readouterr().out, re.M))
    losses, accuracies = [], []
    for rows in ([0, 1], [2, 3], [4, 0]):        # batches of 2 wrap around the 5 rows
        ip = x[rows].astype(np.float64) @ w.T + b
        losses.append(((ip - target[rows]) ** 2).sum() / (2 * len(rows)))
        accuracies.append((ip.argmax(axis=1) == cls[rows]).mean())
    assert float(printed["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert float(printed["accuracy"]) == pytest.approx(np.mean(accuracies), rel=1e-5)
