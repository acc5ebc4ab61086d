"""SIGKILL ``fcnwild train`` at random moments; resume each time with ``--snapshot latest``.

A net with shuffled HDF5 data and a TRAIN Dropout trains for N iterations with a
snapshot every other iteration. The run is killed KILLS times, at moments
drawn from a seeded generator over the phases of a run (start-up and restore,
iterations, snapshot writes: each atomic write waits WRITE_DELAY_S seconds
before it replaces its final name, so kills often land mid-snapshot), and
restarted each time with ``--snapshot latest``. The final weights and solver state must equal those of
an uninterrupted run bit for bit.

The runs are children forked by one ``solver_process.py --serve`` process, so
forty-odd runs do not each pay torch's import.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnwild.solvers.snapshot import read_solverstate
from solver_cases import HELPER, segmentation_net, solver_text, weights, write, write_hdf5_source
from solver_process import WRITE_DELAY

N, EVERY, KILLS = 40, 2, 20
WRITE_DELAY_S = 0.04
SUFFIXES = {"BINARYPROTO": (".caffemodel", ".solverstate"),
            "HDF5": (".caffemodel.h5", ".solverstate.h5")}


class TrainServer:
    """Drives ``solver_process.py --serve``: start a run, kill it, wait for it."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
                   **{WRITE_DELAY: str(WRITE_DELAY_S)})
        self.process = subprocess.Popen([sys.executable, str(HELPER), "--serve"], cwd=cwd,
                                        env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _reply(self, word: str) -> list[str]:
        line = self.process.stdout.readline().split()
        assert line and line[0] == word, f"server said {line!r}, expected {word}"
        return line[1:]

    def start(self, argv: list[str]) -> int:
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        return int(self._reply("started")[0])

    def wait(self, pid: int) -> int:
        """The child's wait status once it is gone."""
        got, status = self._reply("exited")
        assert int(got) == pid
        return int(status)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    server = TrainServer(root)
    yield server, root
    server.close()


def _case(folder: Path, fmt: str) -> tuple[Path, Path]:
    folder.mkdir()
    write_hdf5_source(folder, "train", rows=[5, 7], seed=21)
    write(folder / "net.prototxt", segmentation_net("train.txt", batch=3, shuffle=True,
                                                    dropout=True))
    common = dict(snapshot_format=fmt, max_iter=N, snapshot=EVERY, stepsize=20)
    return (write(folder / "straight.prototxt",
                  solver_text("net.prototxt", snapshot_prefix=str(folder / "straight/run"), **common)),
            write(folder / "killed.prototxt",
                  solver_text("net.prototxt", snapshot_prefix=str(folder / "killed/run"), **common)))


def _temporaries(folder: Path) -> set[str]:
    return {p.name for p in folder.glob(".*.tmp")} if folder.is_dir() else set()


def _train(solver: Path) -> list[str]:
    return ["train", "--solver", str(solver), "--snapshot", "latest", "--quiet"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _until_a_new_write(pid: int, folder: Path, before: set[str]) -> float:
    """Seconds until the run starts writing a snapshot (a temporary file appears that was
    not there before it started); 0 if the run ends first."""
    start = time.perf_counter()
    while _alive(pid):
        if _temporaries(folder) - before:
            return time.perf_counter() - start
        time.sleep(0.001)
    return 0.0


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_killed_and_resumed_training_ends_bit_identical(server, fmt):
    server, root = server
    straight, killed = _case(root / fmt, fmt)
    start = time.perf_counter()
    pid = server.start(_train(straight))
    startup = _until_a_new_write(pid, straight.parent / "straight", set())
    assert server.wait(pid) == 0
    period = (time.perf_counter() - start - startup) * EVERY / N

    # A third of the kills land anywhere in the start-up (building the net, restoring the
    # snapshot); a third while the run's first snapshot write is under way (its temporary
    # file waits WRITE_DELAY_S before it is renamed); a third up to 1.5 snapshot periods
    # after that write began. Every run makes little progress, so all kills happen.
    rng = random.Random(f"kill-{fmt}")
    kills = during_writes = 0
    folder = killed.parent / "killed"
    while kills < KILLS:
        before = _temporaries(folder)
        pid = server.start(_train(killed))
        moment = rng.choice(["start-up", "mid-write", "training"])
        if moment == "start-up":
            time.sleep(rng.uniform(0, startup))
        else:
            _until_a_new_write(pid, folder, before)
            time.sleep(rng.uniform(0, WRITE_DELAY_S / 2 if moment == "mid-write"
                                   else 1.5 * period))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        status = server.wait(pid)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0
            pytest.fail(f"training finished after {kills} kills; the kills come too late")
        assert os.WTERMSIG(status) == signal.SIGKILL
        kills += 1
        during_writes += bool(_temporaries(folder))
    pid = server.start(_train(killed))
    assert server.wait(pid) == 0

    print(f"{fmt}: {kills} kills, {during_writes} during a snapshot write")
    assert during_writes >= 3
    assert not _temporaries(folder)     # the last start cleared what the kills left
    model, state = SUFFIXES[fmt]
    reference = weights(straight.parent / f"straight/run_iter_{N}{model}")
    resumed = weights(folder / f"run_iter_{N}{model}")
    assert reference.keys() == resumed.keys() == {"conv1", "score"}
    for layer, blobs in reference.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(blob, resumed[layer][i]), f"{layer}/{i} differs"
    with read_solverstate(straight.parent / f"straight/run_iter_{N}{state}") as a, \
            read_solverstate(folder / f"run_iter_{N}{state}") as b:
        assert a.iter == b.iter == N and a.current_step == b.current_step
        assert len(a.history) == len(b.history) == 4
        for x, y in zip(a.history, b.history):
            assert np.array_equal(x.load(), y.load())
