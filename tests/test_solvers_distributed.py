"""Data-parallel training under torchrun (CPU, gloo) against one process.

Caffe's multi-GPU semantics: each of W ranks reads batch B, the diffs are
averaged over the ranks, so W x B equals 1 x (W B) exactly when every rank's
loss is normalised by the same count. Here SoftmaxWithLoss normalises by the
VALID pixels and no pixel is ignored, so each rank divides by B*H*W and the
average of the ranks' diffs is the diff of the 2B-row batch divided by 2B*H*W.
(With ignore_label and unequal valid counts per rank the two would differ,
in Caffe as here.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
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
from fcnwild.solvers.snapshot import read_solverstate
from fcnwild.solvers.solver import Solver

B, ITERS = 2, 5


def _hdf5_layer(folder, batch: int):
    param = parse_text(f'name: "data" type: "HDF5Data" top: "data" top: "label" '
                       f'hdf5_data_param {{ source: "train.txt" batch_size: {batch} }}',
                       caffe_pb2.LayerParameter())
    layer = layer_class("HDF5Data")(param, LayerContext(phase=caffe_pb2.TRAIN, base_dir=folder))
    layer.setup([])
    return layer


def test_ranks_read_caffes_interleaved_shards_of_each_global_batch(tmp_path):
    write_hdf5_source(tmp_path, "train", rows=[5, 4], seed=5)
    whole = _hdf5_layer(tmp_path, 3 * B)
    ranks = [_hdf5_layer(tmp_path, B) for _ in range(3)]
    for r, layer in enumerate(ranks):
        layer.set_shard(r, 3)
    for _ in range(4):      # 9 rows, global batch 6: crosses files and wraps around
        expected = whole()[0].numpy()
        shards = [layer()[0].numpy() for layer in ranks]
        for r, shard in enumerate(shards):   # rank r keeps rows r, r + 3, ... (HDF5DataLayer::Skip)
            assert np.array_equal(shard, expected[r::3])
        positions = [layer.state_dict_position() for layer in ranks]
        assert positions[1] == positions[0] == positions[2] == whole.state_dict_position()


def test_test_phase_layers_are_not_sharded(tmp_path):
    write_hdf5_source(tmp_path, "train", rows=[6], seed=6)
    param = parse_text('name: "data" type: "HDF5Data" top: "data" top: "label" '
                       'hdf5_data_param { source: "train.txt" batch_size: 2 }',
                       caffe_pb2.LayerParameter())
    layer = layer_class("HDF5Data")(param, LayerContext(phase=caffe_pb2.TEST, base_dir=tmp_path))
    layer.setup([])
    layer.set_shard(1, 2)
    assert layer()[0].shape[0] == 2 and layer.state_dict_position()["offset"] == 2


def test_two_processes_of_batch_b_match_one_process_of_batch_2b(tmp_path):
    write_hdf5_source(tmp_path, "train", rows=[8, 6], seed=7)
    for name, batch in (("single", 2 * B), ("ranks", B)):
        write(tmp_path / f"{name}.prototxt", segmentation_net("train.txt", batch=batch))
        # The ranks' fillers draw from random_seed + rank: the broadcast must fix that. The
        # gradient norm (about 0.4) gets clipped: clipping must see the averaged diffs.
        write(tmp_path / f"solver_{name}.prototxt", solver_text(
            f"{name}.prototxt", max_iter=ITERS, display=1, snapshot_prefix=f"{name}/run",
            clip_gradients=0.3))
    Solver(tmp_path / "solver_single.prototxt").solve()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = run_helper(["train", "--solver", "solver_ranks.prototxt", "--quiet"], cwd=tmp_path,
                        launcher=[torchrun, "--standalone", "--nproc-per-node", "2"])

    one, two = (weights(tmp_path / f"{name}/run_iter_{ITERS}.caffemodel")
                for name in ("single", "ranks"))
    assert one.keys() == two.keys() == {"conv1", "score"}
    for layer, blobs in one.items():
        for i, blob in enumerate(blobs):
            error = float(np.abs(blob - two[layer][i]).max())
            assert error <= 1e-5 * float(np.abs(blob).max()), f"{layer}/{i}: {error:.3g}"
    # Only rank 0 logs (once per display) and writes; its snapshot holds both ranks' RNGs.
    assert result.stderr.count("Iteration 0 (") == 1
    assert "Gradient clipping" in result.stderr
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == \
        [f"run_iter_{ITERS}.caffemodel", f"run_iter_{ITERS}.solverstate"]
    with read_solverstate(tmp_path / f"ranks/run_iter_{ITERS}.solverstate") as state:
        extra = json.loads(state.resume_state)
    assert len(extra["rng"]) == 2 and extra["rng"][0] != extra["rng"][1]
    assert extra["data_positions"]["train"]["data"]["offset"] == 2 * B * ITERS
