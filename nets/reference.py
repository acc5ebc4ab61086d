"""Comparing a Net with blobs recorded from real Caffe (``fcnwild compare`` and the tests).

A reference file (HDF5) holds ``inputs/<blob>``, ``forward/<blob>``,
``backward/<blob>``, ``params/<layer>/<i>``, ``param_diffs/<layer>/<i>`` and
optionally ``top_diff/<blob>`` (random diffs Caffe back-propagated from),
``aux/dropout_mask/<layer>`` (Caffe's TRAIN-phase dropout masks) and
``params_after_forward/<layer>/<i>`` (blobs a forward pass updates, BatchNorm
statistics). The net is driven exactly as the reference was: the same inputs
and masks, param diffs cleared, backward seeded by the recorded top diffs or
by the loss weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import h5py
import numpy as np
import torch

from fcnwild.base.errors import FcnwildError

PathLike = str | os.PathLike

@dataclass(frozen=True)
class Tolerance:
    """The reference fixtures' rule, per array: ``max|ours - ref| <= atol + rtol * max|ref|``
    (scale-aware: relative to the array's magnitude, with a small absolute floor)."""
    rtol: float
    atol: float

    def bound(self, ref: np.ndarray) -> float:
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        return self.atol + self.rtol * scale


# float32 forward of any net; gradients of full nets (the fixtures' own figures).
DEFAULT_TOLERANCES = {
    "forward": Tolerance(1e-5, 1e-7),
    "backward": Tolerance(1e-4, 1e-10),
    "param_diffs": Tolerance(1e-4, 1e-10),
}


def tolerances_of(meta: dict) -> dict[str, Tolerance]:
    """The defaults, replaced kind by kind by what a case's ``meta.json: tolerances`` states."""
    stated = {kind: Tolerance(float(t["rtol"]), float(t["atol"]))
              for kind, t in meta.get("tolerances", {}).items()
              if isinstance(t, dict) and "rtol" in t and "atol" in t}
    return {**DEFAULT_TOLERANCES, **stated}


@dataclass
class Comparison:
    kind: str                 # forward | params_after_forward | backward | param_diffs
    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    relative_error: float     # max_abs_error / max|ref|
    tolerance: float          # allowed max_abs_error
    passed: bool
    note: str = ""


def compare_arrays(kind: str, name: str, ours: np.ndarray | None, ref: np.ndarray,
                   tolerance: Tolerance, unknown: np.ndarray | None = None) -> Comparison:
    """Compare one array; ``unknown`` marks positions the reference does not determine."""
    ref = np.asarray(ref, dtype=np.float64)
    allowed = tolerance.bound(ref)
    if ours is None:
        return Comparison(kind, name, ref.shape, float("nan"), float("nan"), allowed, False,
                          "missing in the net")
    ours = np.asarray(ours, dtype=np.float64)
    if ours.size != ref.size:
        return Comparison(kind, name, ref.shape, float("nan"), float("nan"), allowed, False,
                          f"shape {ours.shape} vs reference {ref.shape}")
    ours = ours.reshape(ref.shape)
    difference = np.abs(ours - ref)
    note = ""
    if unknown is not None and unknown.any():
        difference = np.where(unknown.reshape(ref.shape), 0.0, difference)
        note = f"{int(unknown.sum())} positions not determined by the reference"
    error = float(difference.max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    relative = error / scale if scale else error
    return Comparison(kind, name, ref.shape, error, relative, allowed, error <= allowed, note)


def compare_with_reference(net, reference: PathLike, *,
                           tolerances: Mapping[str, Tolerance] | None = None,
                           backward: bool = True) -> list[Comparison]:
    """Drive ``net`` as the reference was driven and compare every recorded array
    (``tolerances`` per kind; the defaults for kinds it leaves out)."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    try:
        h5 = h5py.File(reference, "r")
    except OSError as err:
        raise FcnwildError(f"cannot open reference blobs ({err})", file=reference) from None
    with h5:
        for group in ("inputs", "forward"):
            if group not in h5:
                raise FcnwildError(f"reference file has no '/{group}' group; expected the "
                                   "layout of Caffe reference blobs (inputs/, forward/, "
                                   "backward/, param_diffs/)", file=reference)
        for name, data in h5["inputs"].items():
            if name not in net.blobs:
                raise FcnwildError(f"reference input '{name}' is not a blob of the net "
                                   f"(inputs: {net.inputs})", file=reference)
            net.set_input(name, data[()])
        masked = []
        for layer_name, mask in (h5["aux/dropout_mask"].items()
                                 if "aux/dropout_mask" in h5 else ()):
            layer = net.layer_dict.get(layer_name)
            if layer is None or not hasattr(layer, "set_next_mask"):
                raise FcnwildError(f"reference has a dropout mask for '{layer_name}', which "
                                   "is not a Dropout layer of the net", file=reference)
            layer.set_next_mask(torch.from_numpy(mask[()]))
            masked.append(net.bottom_names[net.layer_names.index(layer_name)][0])
        net.clear_param_diffs()
        with torch.enable_grad():
            net.forward()
        # A recorded mask is recovered as top/bottom, so it is unknown where the bottom is 0;
        # the diff Caffe passed to such a bottom is unknown there too.
        unknown = {name: net.blobs[name].data == 0 for name in masked}
        results = [compare_arrays("forward", name, _blob(net, name, "data"), ref[()],
                                  tol["forward"])
                   for name, ref in h5["forward"].items()]
        results += _compare_params(net, h5, "params_after_forward", "data", tol["forward"])
        if backward and "backward" in h5:
            for name, diff in (h5["top_diff"].items() if "top_diff" in h5 else ()):
                net.blobs[name].diff = diff[()]
            net.backward()
            results += [compare_arrays("backward", name, _blob(net, name, "diff"), ref[()],
                                       tol["backward"], unknown.get(name))
                        for name, ref in h5["backward"].items()]
            results += _compare_params(net, h5, "param_diffs", "diff", tol["param_diffs"])
    return results


def _blob(net, name: str, attr: str) -> np.ndarray | None:
    blob = net.blobs.get(name)
    return None if blob is None else getattr(blob, attr)


def _compare_params(net, h5: h5py.File, group: str, attr: str, tolerance: Tolerance
                    ) -> list[Comparison]:
    if group not in h5:
        return []
    results = []
    for layer_name, blobs in h5[group].items():
        params = net.params.get(layer_name, [])
        for index, ref in blobs.items():
            i = int(index)
            ours = getattr(params[i], attr) if i < len(params) else None
            results.append(compare_arrays(group, f"{layer_name}/{i}", ours, ref[()], tolerance))
    return results


def format_table(results: list[Comparison]) -> str:
    rows = [f"{'kind':<21} {'name':<34} {'shape':<18} {'max abs err':>12} "
            f"{'rel err':>10} {'tolerance':>10}  result"]
    for r in results:
        shape = "x".join(str(d) for d in r.shape) or "scalar"
        verdict = "pass" if r.passed else "FAIL" + (f" ({r.note})" if r.note else "")
        rows.append(f"{r.kind:<21} {r.name:<34} {shape:<18} {r.max_abs_error:>12.3e} "
                    f"{r.relative_error:>10.2e} {r.tolerance:>10.2e}  {verdict}")
    failed = sum(not r.passed for r in results)
    rows.append(f"{len(results) - failed}/{len(results)} arrays within tolerance")
    return "\n".join(rows)
