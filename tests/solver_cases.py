"""Small solver cases written into a test's tmp_path: HDF5 data, nets and solver files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from fcnwild.nets.weights import read_weights

HELPER = Path(__file__).with_name("solver_process.py")
_ENUM_FIELDS = {"snapshot_format", "solver_mode", "solver_type"}


def write_hdf5_source(folder: Path, name: str, rows: Sequence[int], *, seed: int,
                      channels: int = 3, size: int = 4, classes: int = 3) -> Path:
    """A source list of ``len(rows)`` .h5 files with random (never repeating) rows:
    ``data`` (channels, size, size) and ``label`` (size, size) in [0, classes)."""
    rng = np.random.RandomState(seed)
    names = []
    for i, count in enumerate(rows):
        path = folder / f"{name}_{i}.h5"
        with h5py.File(path, "w") as h5:
            h5["data"] = rng.randn(count, channels, size, size).astype(np.float32)
            h5["label"] = rng.randint(0, classes, (count, size, size)).astype(np.float32)
        names.append(path.name)
    source = folder / f"{name}.txt"
    source.write_text("\n".join(names) + "\n")
    return source


def segmentation_net(train_source: str, batch: int, *, shuffle: bool = False,
                     dropout: bool = False, test_source: str | None = None,
                     test_batch: int = 2, classes: int = 3) -> str:
    """conv3x3(4) + ReLU [+ Dropout in TRAIN] + conv1x1(classes) + SoftmaxWithLoss."""
    data = f"""
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{train_source}" batch_size: {batch}
                     shuffle: {str(shuffle).lower()} }} }}
"""
    if test_source:
        data += f"""
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{test_source}" batch_size: {test_batch} shuffle: true }} }}
"""
    drop = """
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" include { phase: TRAIN }
  dropout_param { dropout_ratio: 0.5 } }
""" if dropout else ""
    return f"""name: "tiny_seg"
{data}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.3 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
{drop}
layer {{ name: "score" type: "Convolution" bottom: "conv1" top: "score"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: {classes} kernel_size: 1
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }}
"""


def solver_text(net: str, **fields) -> str:
    """A solver prototxt; ``fields`` override the defaults (None drops one; strings are
    quoted, except the values of enum fields; lists repeat the field)."""
    values = dict(net=net, type="SGD", base_lr=0.05, lr_policy="step", stepsize=3, gamma=0.5,
                  momentum=0.9, weight_decay=0.0005, max_iter=6, random_seed=1701, display=0,
                  snapshot_prefix="snapshots/run")
    values.update(fields)
    lines = []
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, str) and key not in _ENUM_FIELDS:
                item = f'"{item}"'
            elif isinstance(item, bool):
                item = str(item).lower()
            lines.append(f"{key}: {item}")
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def weights(path: Path) -> dict[str, list[np.ndarray]]:
    return {name: [np.array(b) for b in blobs] for name, blobs in read_weights(path).items()
            if blobs}


def run_helper(args: Sequence[str], cwd: Path, *, launcher: Sequence[str] = (),
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run tests/solver_process.py in a new process (optionally under ``launcher``,
    e.g. torchrun), with this process's torch thread count so float sums agree."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    command = list(launcher) + ([str(HELPER)] if launcher else [sys.executable, str(HELPER)])
    result = subprocess.run(command + list(args), cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{command + list(args)} failed:\n{result.stderr[-4000:]}"
    return result
