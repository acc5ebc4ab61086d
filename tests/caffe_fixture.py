"""Access to the Caffe reference fixtures (tests/fixtures/caffe_reference), held to the
project's one tolerance rule (``fcnwild.nets.reference.Tolerance``).

A case folder holds ``net.prototxt``, ``meta.json`` and ``blobs.h5`` (groups
``inputs``, ``forward``, ``backward``, ``top_diff``, ``params``, ``param_diffs``,
``params_after_forward``, ``aux/dropout_mask``; see the folder's README.md).

Tolerance: ``max|ours - ref| <= atol + rtol * max|ref|`` per array, with the
case's ``meta.json`` tolerances when given (never loosened), else the defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.nets.reference import DEFAULT_TOLERANCES, Tolerance, tolerances_of

FIXTURES = Path(__file__).parent / "fixtures" / "caffe_reference"


def case_names(kind: str | None = None) -> list[str]:
    """Fixture case names, optionally only those whose meta.json ``kind`` matches."""
    names = sorted(p.name for p in FIXTURES.iterdir() if (p / "meta.json").is_file())
    if kind is None:
        return names
    return [n for n in names if json.loads((FIXTURES / n / "meta.json").read_text())["kind"] == kind]


@dataclass
class CaffeCase:
    name: str
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = FIXTURES / self.name
        if not (self.folder / "meta.json").is_file():
            raise FileNotFoundError(f"no Caffe fixture case {self.name!r} in {FIXTURES}")

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    @property
    def prototxt_path(self) -> Path:
        return self.folder / "net.prototxt"

    @cached_property
    def prototxt(self) -> str:
        return self.prototxt_path.read_text()

    @cached_property
    def net_param(self) -> caffe_pb2.NetParameter:
        return text_format.Parse(self.prototxt, caffe_pb2.NetParameter())

    @property
    def phase(self) -> int:
        return caffe_pb2.TRAIN if self.meta["phase"] == "TRAIN" else caffe_pb2.TEST

    def arrays(self, group: str) -> dict[str, np.ndarray]:
        """``blobs.h5`` group ``group`` as {name: array} (empty if the group is absent)."""
        with h5py.File(self.folder / "blobs.h5", "r") as h5:
            if group not in h5:
                return {}
            return {name: np.asarray(item) for name, item in h5[group].items()
                    if isinstance(item, h5py.Dataset)}

    def layer_arrays(self, group: str) -> dict[str, list[np.ndarray]]:
        """``params``-like groups: {layer: [blob 0, blob 1, ...]}."""
        with h5py.File(self.folder / "blobs.h5", "r") as h5:
            if group not in h5:
                return {}
            return {layer: [np.asarray(blobs[str(i)]) for i in range(len(blobs))]
                    for layer, blobs in h5[group].items()}

    def tolerance(self, kind: str) -> Tolerance:
        """The tolerance for ``kind``: the case's own when meta.json gives it."""
        return tolerances_of(self.meta)[kind]

    def assert_close(self, ours, ref, kind: str, name: str = "") -> float:
        return assert_close(ours, ref, kind, self.tolerance(kind), name=f"{self.name}: {name}")


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(ours, ref, kind: str, tolerance: Tolerance | None = None, *,
                 name: str = "") -> float:
    """Assert ``max|ours - ref| <= atol + rtol * max|ref|`` (``tolerance``, else the default
    for ``kind``); returns max|ours - ref| / max|ref|.

    Shapes must match, except that a 0-axis blob (Caffe's loss/accuracy blobs) equals a
    one-element reference, as the fixtures store those as shape (1,).
    """
    tolerance = tolerance or DEFAULT_TOLERANCES[kind]
    ours, ref = _as_numpy(ours), _as_numpy(ref)
    if ours.shape != ref.shape and not (ours.size == ref.size == 1):
        raise AssertionError(f"{name} ({kind}): shape {ours.shape}, reference {ref.shape}")
    ours = ours.reshape(ref.shape)
    if not np.all(np.isfinite(ours)):
        raise AssertionError(f"{name} ({kind}): non-finite values")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    error = float(np.abs(ours - ref).max()) if ref.size else 0.0
    bound = tolerance.bound(ref)
    if error > bound:
        raise AssertionError(f"{name} ({kind}): max|ours - ref| = {error:.3g} > {bound:.3g} "
                             f"(atol {tolerance.atol:g} + rtol {tolerance.rtol:g} * max|ref| "
                             f"{scale:.3g})")
    return error / scale if scale else error
