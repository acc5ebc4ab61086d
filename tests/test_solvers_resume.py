"""Stop and resume: N iterations straight == k, snapshot, restore in a new process, N - k.

The net reads two shuffled HDF5 files whose rows never repeat and has a TRAIN
Dropout, so the resumed run only matches if the snapshot restores the data
positions (file and row permutations included) and the RNG, not just Caffe's
weights + history + iteration. A test net with a shuffled source runs every
few iterations; its wrap-arounds draw from the same RNG, so its position
matters too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from solver_cases import (
    run_helper,
    segmentation_net,
    solver_text,
    weights,
    write,
    write_hdf5_source,
)

from fcnwild.base import caffe_pb2
from fcnwild.layers.base import LayerContext
from fcnwild.layers.registry import layer_class
from fcnwild.nets.prototxt import parse_text
from fcnwild.solvers.snapshot import read_solverstate, write_solverstate
from fcnwild.solvers.solver import Solver

N, K = 9, 5
CASES = [("SGD", "BINARYPROTO"), ("SGD", "HDF5"), ("Adam", "BINARYPROTO"), ("Adam", "HDF5")]


def _suffixes(fmt: str) -> tuple[str, str]:
    return (".caffemodel.h5", ".solverstate.h5") if fmt == "HDF5" else \
        (".caffemodel", ".solverstate")


def _make_case(folder: Path, solver_type: str, fmt: str) -> None:
    folder.mkdir()
    write_hdf5_source(folder, "train", rows=[5, 7], seed=11)
    write_hdf5_source(folder, "test", rows=[3], seed=12)
    write(folder / "net.prototxt", segmentation_net("train.txt", batch=3, shuffle=True,
                                                    dropout=True, test_source="test.txt"))
    common = dict(type=solver_type, snapshot_format=fmt, max_iter=N, snapshot=K,
                  test_iter=2, test_interval=4,
                  base_lr=0.05 if solver_type == "SGD" else 0.01)
    write(folder / "straight.prototxt", solver_text("net.prototxt", snapshot_prefix=str(folder / "straight/run"),
                                                    **common))
    write(folder / "resumed.prototxt", solver_text("net.prototxt", snapshot_prefix=str(folder / "resumed/run"),
                                                   **common))


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every case trained straight here, then resumed from iteration K in ONE new process."""
    root = tmp_path_factory.mktemp("resume")
    folders, commands = {}, []
    for solver_type, fmt in CASES:
        folder = root / f"{solver_type}_{fmt}"
        _make_case(folder, solver_type, fmt)
        Solver(folder / "straight.prototxt").solve()
        state = folder / f"straight/run_iter_{K}{_suffixes(fmt)[1]}"
        commands += [";", "train", "--solver", str(folder / "resumed.prototxt"),
                     "--snapshot", str(state), "--quiet"]
        folders[(solver_type, fmt)] = folder
    run_helper(commands[1:], cwd=root)
    return folders


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_resumed_run_is_bit_identical_to_the_straight_run(cases, case):
    folder = cases[case]
    model, state = _suffixes(case[1])
    # The resumed process started at iteration K: it never wrote an iteration-K snapshot.
    assert sorted(p.name for p in (folder / "resumed").iterdir()) == \
        sorted([f"run_iter_{N}{model}", f"run_iter_{N}{state}"])
    straight, resumed = (weights(folder / f"{run}/run_iter_{N}{model}")
                         for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() == {"conv1", "score"}
    for layer, blobs in straight.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(blob, resumed[layer][i]), f"{layer}/{i} differs"
    with read_solverstate(folder / f"straight/run_iter_{N}{state}") as a, \
            read_solverstate(folder / f"resumed/run_iter_{N}{state}") as b:
        assert a.iter == b.iter == N and a.current_step == b.current_step
        assert len(a.history) == len(b.history) == (4 if case[0] == "SGD" else 8)
        for x, y in zip(a.history, b.history):
            assert np.array_equal(x.load(), y.load())


def _strip(extra: dict, part: str) -> None:
    if part == "rng":
        extra["rng"] = []
    elif part == "train data":
        extra["data_positions"]["train"] = {}
    elif part == "test data":
        extra["data_positions"]["test"] = [{}]
    else:
        extra.clear()


@pytest.mark.parametrize("part", ["everything", "rng", "train data", "test data"])
def test_the_resume_fails_without_each_part_of_the_resume_state(cases, part):
    """Control: the case is sensitive to every part fcnwild adds to Caffe's solverstate,
    so the bit-identical result above is not an accident of the data."""
    folder = cases[("SGD", "BINARYPROTO")]
    with read_solverstate(folder / f"straight/run_iter_{K}.solverstate") as state:
        extra = json.loads(state.resume_state)
        _strip(extra, part)
        partial = folder / "straight" / f"partial_{part.replace(' ', '_')}.solverstate"
        write_solverstate(partial, state.iter, state.learned_net, state.current_step,
                          [h.load() for h in state.history], json.dumps(extra) if extra else None)
    solver = Solver(folder / "resumed.prototxt")
    solver.param.snapshot = 0
    solver.restore(partial)
    solver.step(N - K)
    straight = weights(folder / f"straight/run_iter_{N}.caffemodel")
    differs = [not np.array_equal(solver.net.params[name][i].data, blob)
               for name, blobs in straight.items() for i, blob in enumerate(blobs)]
    assert any(differs)


def _hdf5_layer(folder: Path, shuffle: bool):
    param = parse_text(f'name: "data" type: "HDF5Data" top: "data" top: "label" '
                       f'hdf5_data_param {{ source: "train.txt" batch_size: 4 '
                       f'shuffle: {str(shuffle).lower()} }}', caffe_pb2.LayerParameter())
    layer = layer_class("HDF5Data")(param, LayerContext(phase=caffe_pb2.TRAIN, base_dir=folder))
    layer.setup([])
    return layer


def test_hdf5_data_position_is_json_and_continues_the_stream(tmp_path):
    write_hdf5_source(tmp_path, "train", rows=[5, 7], seed=3)
    torch.manual_seed(0)
    layer = _hdf5_layer(tmp_path, shuffle=True)
    for _ in range(4):
        layer()
    position = json.loads(json.dumps(layer.state_dict_position()))
    rng = torch.get_rng_state()
    expected = [layer()[0].numpy() for _ in range(5)]
    torch.manual_seed(99)               # a fresh layer draws other permutations ...
    fresh = _hdf5_layer(tmp_path, shuffle=True)
    fresh.load_state_dict_position(position)
    torch.set_rng_state(rng)            # ... until position and RNG are restored
    for batch in expected:
        assert np.array_equal(fresh()[0].numpy(), batch)
