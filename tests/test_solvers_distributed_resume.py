"""Stop and resume under torchrun: 2 ranks straight == 2 ranks resumed from a snapshot.

Each rank draws its own Dropout masks and reads its own rows, so this only holds
if rank 0's snapshot carries every rank's RNG state and a data position that
fits every rank.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from solver_cases import (run_helper, segmentation_net, solver_text, weights, write,
                          write_hdf5_source)

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
            "--nproc-per-node", "2"]


def test_two_rank_run_resumed_in_new_processes_is_bit_identical(tmp_path):
    write_hdf5_source(tmp_path, "train", rows=[7, 6], seed=8)
    write(tmp_path / "net.prototxt", segmentation_net("train.txt", batch=2, dropout=True))
    for name in ("straight", "resumed"):
        write(tmp_path / f"{name}.prototxt", solver_text(
            "net.prototxt", max_iter=6, snapshot=3, snapshot_prefix=f"{name}/run"))
    run_helper(["train", "--solver", "straight.prototxt", "--quiet"], cwd=tmp_path,
               launcher=TORCHRUN)
    run_helper(["train", "--solver", "resumed.prototxt", "--snapshot",
                "straight/run_iter_3.solverstate", "--quiet"], cwd=tmp_path, launcher=TORCHRUN)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == \
        ["run_iter_6.caffemodel", "run_iter_6.solverstate"]
    straight, resumed = (weights(tmp_path / f"{name}/run_iter_6.caffemodel")
                         for name in ("straight", "resumed"))
    for layer, blobs in straight.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(blob, resumed[layer][i]), f"{layer}/{i} differs"
