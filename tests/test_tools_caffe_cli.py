"""Caffe's command line on fcnwild: gflags spellings of every Caffe flag, -gpu, the signal
effects of ``caffe train``, ``caffe test``'s log lines, ``device_query`` and the opt-in
``caffe`` script that scripts shelling out to ``caffe`` find on PATH."""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from solver_cases import segmentation_net, solver_text, weights, write, write_hdf5_source

from fcnwild.base.errors import UsageError
from fcnwild.nets.net import Net
from fcnwild.solvers.solver import Solver, SolverAction
from fcnwild.tools import caffe_flags, device_query_cmd, train_cmd
from fcnwild.tools.cli import build_parser, main
from fcnwild.tools.signals import SignalHandler

REPO = Path(__file__).resolve().parents[1]
SHIM_BIN = REPO / "pycaffe" / "shim" / "bin"


def spellings(flag: str, value: str) -> list[list[str]]:
    """The four ways gflags accepts a valued flag."""
    return [[f"-{flag}", value], [f"-{flag}={value}"], [f"--{flag}={value}"],
            [f"--{flag}", value]]


# verb, the verb's other required flags, flag, value given, value parsed
CAFFE_FLAGS = [
    ("train", [], "solver", "s.prototxt", "s.prototxt"),
    ("train", ["-solver", "s"], "weights", "a.caffemodel,b.caffemodel", "a.caffemodel,b.caffemodel"),
    ("train", ["-solver", "s"], "snapshot", "s_iter_4.solverstate", "s_iter_4.solverstate"),
    ("train", ["-solver", "s"], "gpu", "0,1", "0,1"),
    ("train", ["-solver", "s"], "level", "2", 2),
    ("train", ["-solver", "s"], "stage", "a,b", ["a,b"]),
    ("train", ["-solver", "s"], "sigint_effect", "snapshot", "snapshot"),
    ("train", ["-solver", "s"], "sighup_effect", "none", "none"),
    ("test", [], "model", "m.prototxt", "m.prototxt"),
    ("test", ["-model", "m"], "weights", "w.caffemodel", "w.caffemodel"),
    ("test", ["-model", "m"], "iterations", "7", 7),
    ("test", ["-model", "m"], "gpu", "all", "all"),
    ("test", ["-model", "m"], "phase", "TRAIN", "train"),
    ("test", ["-model", "m"], "level", "1", 1),
    ("test", ["-model", "m"], "stage", "deploy", ["deploy"]),
    ("time", [], "model", "m.prototxt", "m.prototxt"),
    ("time", ["-model", "m"], "weights", "w.caffemodel", "w.caffemodel"),
    ("time", ["-model", "m"], "iterations", "3", 3),
    ("time", ["-model", "m"], "gpu", "1", "1"),
    ("time", ["-model", "m"], "phase", "TEST", "test"),
    ("time", ["-model", "m"], "level", "3", 3),
    ("time", ["-model", "m"], "stage", "x", ["x"]),
    ("device_query", [], "gpu", "0", "0"),
]


@pytest.mark.parametrize("verb, required, flag, given, parsed", CAFFE_FLAGS,
                         ids=[f"{c[0]}-{c[2]}" for c in CAFFE_FLAGS])
def test_every_caffe_flag_is_taken_in_each_gflags_spelling(verb, required, flag, given,
                                                           parsed):
    parser = build_parser()
    for argv in spellings(flag, given):
        args = parser.parse_args([verb, *required, *argv])
        assert getattr(args, flag) == parsed, argv


def test_underscored_caffe_flags_also_take_hyphens():
    args = build_parser().parse_args(["train", "-solver", "s", "--sigint-effect", "none"])
    assert args.sigint_effect == "none"


def test_stages_accumulate_over_repeats_and_commas(tmp_path, capsys):
    model = write(tmp_path / "staged.prototxt", """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "a" type: "Power" bottom: "x" top: "a" include { stage: "one" }
  power_param { shift: 1 } }
layer { name: "b" type: "Power" bottom: "x" top: "b" include { stage: "two" }
  power_param { shift: 2 } }
layer { name: "c" type: "Power" bottom: "x" top: "c" include { stage: "three" }
  power_param { shift: 3 } }""")
    args = build_parser().parse_args(["test", "-model", str(model), "-stage", "one,three",
                                      "--stage=two"])
    assert caffe_flags.stages(args) == ["one", "three", "two"]
    assert main(["test", "-model", str(model), "-iterations", "1", "-stage", "one,three"]) == 0
    means = dict(re.findall(r"^(\w) = (\S+)$", capsys.readouterr().out, re.M))
    assert means == {"a": "1", "c": "3"}       # zeros + shift; "b" needs stage two


def test_weights_and_snapshot_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "-solver", "s", "-weights", "w", "-snapshot", "x"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices, as far as device selection can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")


@pytest.mark.parametrize("argv", [
    ["train", "-solver", "solver.prototxt", "-gpu", "0"],
    ["train", "-solver", "solver.prototxt", "-gpu", "all"],
    ["test", "-model", "m.prototxt", "-gpu", "0"],
    ["time", "-model", "m.prototxt", "-gpu", "0,1"],
    ["device_query", "-gpu", "0"],
])
def test_gpu_without_cuda_is_a_clear_error(no_cuda, argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"fcnwild {argv[0]}: error: -gpu {argv[-1]}: no CUDA device is available" in err
    assert "to run on the CPU, leave out -gpu" in err


def test_gpu_ids_are_parsed_as_caffe_does(two_gpus):
    assert caffe_flags.gpu_ids(None) == caffe_flags.gpu_ids("") == []
    assert caffe_flags.gpu_ids("all") == [0, 1]
    assert caffe_flags.gpu_ids("0,1") == [0, 1]
    assert caffe_flags.gpu_ids("1") == [1]
    with pytest.raises(UsageError, match="no CUDA device 2; this machine has 2"):
        caffe_flags.gpu_ids("0,2")
    with pytest.raises(UsageError, match="expected device ids separated by ','"):
        caffe_flags.gpu_ids("0;1")
    with pytest.raises(UsageError, match="listed twice"):
        caffe_flags.gpu_ids("1,1")


def _train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_train_takes_one_process_per_listed_gpu(two_gpus, tmp_path):
    solver = write(tmp_path / "solver.prototxt", solver_text("net.prototxt"))
    assert train_cmd._devices(_train_args(["-solver", str(solver), "-gpu", "0,1"])) == \
        ["cuda:0", "cuda:1"]
    assert train_cmd._devices(_train_args(["-solver", str(solver), "-gpu", "all"])) == \
        ["cuda:0", "cuda:1"]
    assert train_cmd._devices(_train_args(["-solver", str(solver), "-gpu", "1"])) == ["cuda:1"]
    with pytest.raises(UsageError, match="not both"):
        train_cmd._devices(_train_args(["-solver", str(solver), "-gpu", "1",
                                        "--device", "cpu"]))


def test_without_gpu_flag_the_solvers_gpu_mode_picks_its_device_id(two_gpus, tmp_path):
    gpu = write(tmp_path / "gpu.prototxt", solver_text("net.prototxt", solver_mode="GPU",
                                                       device_id=1))
    cpu = write(tmp_path / "cpu.prototxt", solver_text("net.prototxt", solver_mode="CPU"))
    assert train_cmd._devices(_train_args(["-solver", str(gpu)])) == ["cuda:1"]
    assert train_cmd._devices(_train_args(["-solver", str(cpu)])) == ["cpu"]
    # -gpu overrides the solver's mode and device, as in caffe train.
    assert train_cmd._devices(_train_args(["-solver", str(gpu), "-gpu", "0"])) == ["cuda:0"]


def test_the_solvers_gpu_mode_without_cuda_trains_on_the_cpu(no_cuda, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    gpu = write(tmp_path / "gpu.prototxt", solver_text("net.prototxt", solver_mode="GPU"))
    assert train_cmd._devices(_train_args(["-solver", str(gpu)])) == ["cpu"]
    assert "solver_mode: GPU, but no CUDA device is available" in caplog.text
    caplog.clear()
    default = write(tmp_path / "default.prototxt", solver_text("net.prototxt"))
    assert train_cmd._devices(_train_args(["-solver", str(default)])) == ["cpu"]
    assert "solver_mode" not in caplog.text        # the default mode asks for nothing


def test_single_device_verbs_use_the_first_gpu_as_caffe(two_gpus, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    args = SimpleNamespace(gpu="0,1", device=None)
    assert caffe_flags.single_device(args) == "cuda:0"
    assert "Not using GPU #1 for single-GPU function" in caplog.text
    assert "GPU device name: Fake GPU 0" in caplog.text


@pytest.fixture
def folder(tmp_path) -> Path:
    write_hdf5_source(tmp_path, "train", rows=[8, 6], seed=7)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2))
    return tmp_path


def test_gpu_list_ranks_match_one_process_with_the_summed_batch(folder):
    """-gpu 0,1's launcher, given CPU devices (gloo): two ranks of batch 2 train as one
    process of batch 4 (Caffe's multi-GPU semantics, as under torchrun)."""
    write(folder / "single.prototxt", segmentation_net("train.txt", batch=4))
    for name in ("single", "net"):
        write(folder / f"solver_{name}.prototxt", solver_text(
            f"{name}.prototxt", max_iter=3, snapshot_prefix=f"{name}/run"))
    Solver(folder / "solver_single.prototxt").solve()
    args = _train_args(["-solver", str(folder / "solver_net.prototxt"), "--quiet"])
    assert train_cmd._launch_ranks(args, ["cpu", "cpu"]) == 0
    one, two = (weights(folder / f"{name}/run_iter_3.caffemodel") for name in ("single", "net"))
    for layer, blobs in one.items():
        for i, blob in enumerate(blobs):
            error = float(np.abs(blob - two[layer][i]).max())
            assert error <= 1e-5 * float(np.abs(blob).max()), f"{layer}/{i}: {error:.3g}"


class Scripted:
    """An action function answering from a table {iteration: action}."""

    def __init__(self, solver: Solver, actions: dict[int, SolverAction]) -> None:
        self.solver, self.actions, self.asked = solver, actions, []

    def __call__(self) -> SolverAction:
        self.asked.append(self.solver.iter)
        return self.actions.pop(self.solver.iter, SolverAction.NONE)


def test_a_snapshot_request_snapshots_and_a_stop_request_ends_training(folder, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    solver = Solver(write(folder / "solver.prototxt", solver_text(
        "net.prototxt", max_iter=10, display=1)))
    solver.action_request = Scripted(solver, {2: SolverAction.SNAPSHOT,
                                              4: SolverAction.STOP})
    solver.solve()
    assert solver.iter == 4            # the iteration that was running finished
    # SNAPSHOT at 2 and Caffe's snapshot_after_train at the stop.
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == [
        "run_iter_2.caffemodel", "run_iter_2.solverstate",
        "run_iter_4.caffemodel", "run_iter_4.solverstate"]
    assert "Optimization stopped early." in caplog.text
    assert "Iteration 4, loss" not in caplog.text       # no final display pass


def test_a_stop_while_testing_interrupts_the_test_and_training(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fcnwild")
    write_hdf5_source(tmp_path, "train", rows=[7], seed=21)
    write_hdf5_source(tmp_path, "test", rows=[3], seed=22)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2,
                                                      test_source="test.txt"))
    solver = Solver(write(tmp_path / "solver.prototxt", solver_text(
        "net.prototxt", max_iter=10, test_interval=2, test_iter=5, test_initialization=False,
        snapshot_after_train=False)))
    requests = iter([SolverAction.NONE] * 3 + [SolverAction.STOP])
    solver.action_request = lambda: next(requests, SolverAction.NONE)
    solver.solve()
    # Iterations 0 and 1 answered NONE, the test at iteration 2 got NONE, then STOP
    # before its second forward: no training of iteration 2, no test scores.
    assert solver.iter == 2
    assert "Test interrupted." in caplog.text
    assert "Test net output" not in caplog.text
    assert not (tmp_path / "snapshots").exists()


def test_the_signal_handler_turns_signals_into_caffes_actions():
    before = signal.getsignal(signal.SIGINT)
    with SignalHandler("stop", "snapshot") as handler:
        assert handler.check() is SolverAction.NONE
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGHUP)
        assert handler.check() is SolverAction.SNAPSHOT     # SIGHUP is answered first
        assert handler.check() is SolverAction.STOP
        assert handler.check() is SolverAction.NONE         # each signal once
    assert signal.getsignal(signal.SIGINT) is before
    with SignalHandler("none", "stop") as handler:
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.check() is SolverAction.NONE         # ignored, not a KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGHUP)
        assert handler.check() is SolverAction.STOP


def _read_until(stream, pattern: str, seen: list[str], timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen[-30:])}")


def test_sighup_snapshots_and_goes_on_sigint_stops_after_the_iteration(folder):
    solver = write(folder / "solver.prototxt", solver_text("net.prototxt", max_iter=100000,
                                                           display=1))
    process = subprocess.Popen(
        [sys.executable, "-m", "fcnwild.tools.cli", "train", "-solver", str(solver),
         "--quiet"], cwd=folder, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        _read_until(process.stderr, r"Iteration 2 \(", seen)
        process.send_signal(signal.SIGHUP)
        hup = int(_read_until(process.stderr, r"Snapshotting to \S+run_iter_(\d+)\.caffemodel",
                              seen).group(1))
        _read_until(process.stderr, rf"Iteration {hup + 1} \(", seen)    # training goes on
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    seen += rest.splitlines(keepends=True)
    log = "".join(seen)
    assert process.returncode == 0, log
    assert "Optimization stopped early." in log
    last = max(int(i) for i in re.findall(r"Iteration (\d+) \(", log))
    final = int(re.findall(r"Snapshotting to \S+run_iter_(\d+)\.caffemodel", log)[-1])
    assert final == last + 1           # the running iteration finished, none started after
    assert (folder / f"snapshots/run_iter_{hup}.solverstate").is_file()
    assert (folder / f"snapshots/run_iter_{final}.solverstate").is_file()


def test_test_prints_caffes_batch_lines_and_means(folder, capsys):
    model = folder / "net.prototxt"
    net = Net(model, phase="train")
    net.save(folder / "w.caffemodel")
    expected = [Net(model, weights=folder / "w.caffemodel", phase="train")]
    losses = [float(expected[0].forward()["loss"]) for _ in range(3)]
    assert main(["test", "-model", str(model), "-weights", str(folder / "w.caffemodel"),
                 "-iterations", "3", "-phase", "TRAIN"]) == 0
    out = capsys.readouterr().out
    batches = re.findall(r"^Batch (\d), loss = (\S+)$", out, re.M)
    assert [int(i) for i, _ in batches] == [0, 1, 2]
    assert [float(v) for _, v in batches] == pytest.approx(losses, rel=1e-5)
    mean = np.mean(losses)
    assert float(re.search(r"^Loss: (\S+)$", out, re.M).group(1)) == pytest.approx(mean, 1e-5)
    line = re.search(r"^loss = (\S+) \(\* 1 = (\S+) loss\)$", out, re.M)
    assert float(line.group(1)) == float(line.group(2)) == pytest.approx(mean, rel=1e-5)


def test_device_query_needs_a_device_and_prints_caffes_fields(two_gpus, monkeypatch, capsys):
    assert main(["device_query"]) == 2
    assert "Need a device ID to query" in capsys.readouterr().err
    props = SimpleNamespace(name="Fake GPU 1", major=9, minor=0, total_memory=85 * 2**30,
                            multi_processor_count=132, warp_size=32)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    assert main(["device_query", "-gpu", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Device id: +1$", out, re.M)
    assert re.search(r"^Major revision number: +9$", out, re.M)
    assert re.search(r"^Name: +Fake GPU 1$", out, re.M)
    assert re.search(rf"^Total global memory: +{85 * 2**30}$", out, re.M)
    assert re.search(r"^Number of multiprocessors: +132$", out, re.M)
    assert "Clock rate" not in out          # not known to this torch: left out, not guessed
    assert len(device_query_cmd.describe(0).splitlines()) == 7   # the id and the six known


TINY_TRAIN = """
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_the_caffe_script_on_path_runs_caffes_command_lines(folder):
    """What fyu/dilation's train.py does: ``subprocess.call(['caffe', 'train', ...])``
    with the opt-in folder first on PATH."""
    env = dict(os.environ, PATH=os.pathsep.join(
        [str(SHIM_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

    def caffe(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["caffe", *argv], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=120)

    write(folder / "solver.prototxt", solver_text("net.prototxt", max_iter=2))
    trained = caffe("train", "-solver", "solver.prototxt", "-sighup_effect", "none")
    assert trained.returncode == 0, trained.stderr
    assert (folder / "snapshots/run_iter_2.caffemodel").is_file()
    tested = caffe("test", "-model", "net.prototxt", "-weights",
                   "snapshots/run_iter_2.caffemodel", "-iterations", "2", "-phase", "TRAIN")
    assert tested.returncode == 0, tested.stderr
    assert re.search(r"^Batch 1, loss = \S+$", tested.stdout, re.M)
    write(folder / "tiny_train.prototxt", TINY_TRAIN)
    # Input blobs stay zeros, as in caffe time: the zero labels are valid.
    timed = caffe("time", "-model", "tiny_train.prototxt", "-iterations", "1", "--no-gemm")
    assert timed.returncode == 0, timed.stderr
    assert "Average Forward-Backward:" in timed.stdout


def test_messages_name_the_program_caffe_when_run_as_caffe(no_cuda, capsys):
    assert main(["train", "-solver", "s.prototxt", "-gpu", "0"], prog="caffe") == 2
    assert capsys.readouterr().err.startswith("caffe train: error: -gpu 0:")
    with pytest.raises(SystemExit):
        main(["brew"], prog="caffe")
    assert capsys.readouterr().err.startswith("usage: caffe ")


def test_train_sets_the_train_state_level_as_caffe_train_does(tmp_path, monkeypatch):
    """caffe train writes -level (0 when not given) into the solver's train_state, so a
    layer included only from level 1 is left out even when the solver file says level 2."""
    write_hdf5_source(tmp_path, "train", rows=[4], seed=5)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2) +
          'layer { name: "extra" type: "Power" bottom: "score" top: "extra" '
          'include { min_level: 1 } }\n')
    write(tmp_path / "solver.prototxt",
          solver_text("net.prototxt", max_iter=1) + "train_state { level: 2 }\n")
    built = []
    monkeypatch.setattr(Solver, "step", lambda self, n: built.append(self.net.layer_names))
    for flags, included in (([], False), (["-level", "1"], True)):
        assert main(["train", "-solver", str(tmp_path / "solver.prototxt"), "--quiet"]
                    + flags) == 0
        assert ("extra" in built[-1]) is included
