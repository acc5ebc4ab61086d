"""Access to the Caffe reference fixtures (tests/fixtures/caffe_reference) and the
project's one tolerance rule.

A case folder holds ``net.prototxt``, ``meta.json`` and ``blobs.h5`` (groups
``inputs``, ``forward``, ``backward``, ``top_diff``, ``params``, ``param_diffs``,
``params_after_forward``, ``aux/dropout_mask``; see the folder's README.md).

Tolerance: ``max|ours - ref| <= atol + rtol * max|ref|`` per array, with the
case's ``meta.json`` tolerances when given (never loosened), else the defaults
below.
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

FIXTURES = Path(__file__).parent / "fixtures" / "caffe_reference"

# (rtol, atol) per kind when a case states none: forward of any net, gradients of full nets.
DEFAULT_TOLERANCES = {
    "forward": (1e-5, 1e-7),
    "backward": (1e-4, 1e-10),
    "param_diffs": (1e-4, 1e-10),
}


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

    def tolerance(self, kind: str) -> tuple[float, float]:
        """(rtol, atol) for ``kind``: the case's own when meta.json gives it."""
        stated = self.meta.get("tolerances", {}).get(kind)
        if stated is not None:
            return float(stated["rtol"]), float(stated["atol"])
        return DEFAULT_TOLERANCES[kind]

    def assert_close(self, ours, ref, kind: str, name: str = "") -> float:
        rtol, atol = self.tolerance(kind)
        return assert_close(ours, ref, kind, rtol=rtol, atol=atol, name=f"{self.name}: {name}")


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(ours, ref, kind: str, *, rtol: float | None = None, atol: float | None = None,
                 name: str = "") -> float:
    """Assert ``max|ours - ref| <= atol + rtol * max|ref|``; returns max|ours - ref| / max|ref|.

    Shapes must match, except that a 0-axis blob (Caffe's loss/accuracy blobs) equals a
    one-element reference, as the fixtures store those as shape (1,).
    """
    default_rtol, default_atol = DEFAULT_TOLERANCES[kind]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    ours, ref = _as_numpy(ours), _as_numpy(ref)
    if ours.shape != ref.shape and not (ours.size == ref.size == 1):
        raise AssertionError(f"{name} ({kind}): shape {ours.shape}, reference {ref.shape}")
    ours = ours.reshape(ref.shape)
    if not np.all(np.isfinite(ours)):
        raise AssertionError(f"{name} ({kind}): non-finite values")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    error = float(np.abs(ours - ref).max()) if ref.size else 0.0
    bound = atol + rtol * scale
    if error > bound:
        raise AssertionError(f"{name} ({kind}): max|ours - ref| = {error:.3g} > "
                             f"{bound:.3g} (atol {atol:g} + rtol {rtol:g} * max|ref| {scale:.3g})")
    return error / scale if scale else error
