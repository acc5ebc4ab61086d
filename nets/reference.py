"""Comparing a Net with blobs recorded from real Caffe (``fcnwild compare`` and the tests).

A reference in the full layout (HDF5) holds ``forward/<blob>`` and, as the case
needs, ``inputs/<blob>``, ``backward/<blob>``, ``params/<layer>/<i>`` (copied into
a net built without weights, compared with the net's otherwise),
``param_diffs/<layer>/<i>``, ``top_diff/<blob>`` (random diffs Caffe
back-propagated from), ``params_after_forward/<layer>/<i>`` (blobs a forward
pass updates, BatchNorm statistics), ``forward_calls/<k>/<blob>`` (the blobs
after the k-th forward of the same net: data layers advance through their
source, recurrent layers carry their state; call 0 is ``forward/``) and
``aux/``: ``dropout_mask/<layer>`` (Caffe's TRAIN-phase dropout masks),
``memory_data/{data,labels}`` (given to the first layer, a MemoryData, through
``set_input_arrays`` as pycaffe's ``Net.set_input_arrays`` does) and
``hdf5_output/<dataset>`` (what the net's HDF5Output layer must write); other
``aux/`` arrays document how the case was made. Data-layer cases have no
``inputs/`` and no ``backward/``. Flat dumps (``.npz``, a folder of ``.npy``
files, an HDF5 file of one dataset per name) fill the same roles by a naming rule;
``reference_files.py`` reads every format.

The net is driven exactly as the reference was: the same inputs, arrays and
masks, param diffs cleared, one forward, backward seeded by the recorded top
diffs or by the loss weights, then the further forward calls.

A reference case folder (``meta.json`` beside ``blobs.h5``) was recorded by Caffe
with the case folder as working directory; ``case_workdir`` gives the net such a
working directory without letting it write into the reference folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np
import torch

from fcnwild.base.errors import FcnwildError
from fcnwild.nets.reference_files import LayerArrays, Loader, Reference, open_reference

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
    # forward | params_after_forward | backward | param_diffs | forward_calls/<k> | written_file
    kind: str
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
                           backward: bool = True, load_params: bool = False
                           ) -> list[Comparison]:
    """Drive ``net`` as the reference was driven and compare every recorded array
    (``tolerances`` per kind; the defaults for kinds it leaves out).

    ``reference`` is any format ``open_reference`` reads. Its params are copied into
    the net with ``load_params`` (a net built without weights), compared otherwise.
    Files a layer writes (HDF5Output) are read back from the current working
    directory, where Caffe wrote them (see ``case_workdir``)."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    with open_reference(reference, net) as ref:
        if load_params:
            _load_params(net, ref)
            results = []
        else:
            results = _compare_params(net, ref.params, "params", "data", tol["forward"])
        _feed_inputs(net, ref)
        masked = _set_dropout_masks(net, ref)
        net.clear_param_diffs()
        with torch.enable_grad():
            net.forward()
        # A recorded mask is recovered as top/bottom, so it is unknown where the bottom is 0;
        # the diff Caffe passed to such a bottom is unknown there too.
        unknown = {name: net.blobs[name].data == 0 for name in masked}
        results += _compare_blobs(net, ref.forward, "forward", "data", tol["forward"])
        results += _compare_params(net, ref.params_after_forward, "params_after_forward",
                                   "data", tol["forward"])
        if backward and (ref.backward or ref.param_diffs):
            for name, diff in ref.top_diff.items():
                net.blobs[name].diff = diff()
            net.backward()
            results += _compare_blobs(net, ref.backward, "backward", "diff", tol["backward"],
                                      unknown)
            results += _compare_params(net, ref.param_diffs, "param_diffs", "diff",
                                       tol["param_diffs"])
        for call in sorted(ref.forward_calls)[1:]:
            net.forward()
            results += _compare_blobs(net, ref.forward_calls[call], f"forward_calls/{call}",
                                      "data", tol["forward"])
        results += _compare_written_files(net, ref.aux.get("hdf5_output", {}), tol["forward"])
    return results


def _load_params(net, ref: Reference) -> None:
    for layer_name, blobs in ref.params.items():
        params = net.params.get(layer_name)
        if params is None:
            raise FcnwildError(f"the reference has params of layer '{layer_name}', which has "
                               "none in the net", file=ref.source)
        for i, load in blobs.items():
            if i >= len(params):
                raise FcnwildError(f"the reference has param {i} of layer '{layer_name}', "
                                   f"which has {len(params)}", file=ref.source)
            value = load()
            if value.size != params[i].count:
                raise FcnwildError(f"param {i} of layer '{layer_name}' has shape "
                                   f"{value.shape} in the reference, {params[i].shape} in "
                                   "the net", file=ref.source)
            params[i].data = value


def _feed_inputs(net, ref: Reference) -> None:
    for name, load in ref.inputs.items():
        if name not in net.blobs:
            raise FcnwildError(f"reference input '{name}' is not a blob of the net "
                               f"(inputs: {net.inputs})", file=ref.source)
        net.set_input(name, load())
    arrays = ref.aux.get("memory_data")
    if arrays:
        first = net.layers[0] if len(net.layers) else None
        if first is None or not hasattr(first, "set_input_arrays"):
            raise FcnwildError("the reference feeds aux/memory_data through set_input_arrays, "
                               "which needs a MemoryData layer first in the net (as pycaffe's "
                               "Net.set_input_arrays does)", file=ref.source)
        first.set_input_arrays(arrays["data"](), arrays["labels"]())


def _set_dropout_masks(net, ref: Reference) -> list[str]:
    """Give each Dropout layer its recorded mask; returns the masked bottoms."""
    masked = []
    for layer_name, load in ref.aux.get("dropout_mask", {}).items():
        layer = net.layer_dict.get(layer_name)
        if layer is None or not hasattr(layer, "set_next_mask"):
            raise FcnwildError(f"reference has a dropout mask for '{layer_name}', which "
                               "is not a Dropout layer of the net", file=ref.source)
        layer.set_next_mask(torch.from_numpy(load()))
        masked.append(net.bottom_names[net.layer_names.index(layer_name)][0])
    return masked


def _compare_blobs(net, arrays: Mapping[str, Loader], kind: str, attr: str,
                   tolerance: Tolerance, unknown: Mapping[str, np.ndarray] | None = None
                   ) -> list[Comparison]:
    return [compare_arrays(kind, name, _blob(net, name, attr), load(), tolerance,
                           (unknown or {}).get(name))
            for name, load in arrays.items()]


def _compare_written_files(net, expected: Mapping[str, Loader], tolerance: Tolerance
                           ) -> list[Comparison]:
    """``aux/hdf5_output/<dataset>`` against the file the net's HDF5Output layer wrote
    (its file_name, relative to the working directory as in Caffe)."""
    if not expected:
        return []
    writer = next((layer for layer in net.layers if layer.type_name == "HDF5Output"), None)
    path = Path(writer.param.hdf5_output_param.file_name) if writer is not None else None
    written: dict[str, np.ndarray] = {}
    note = "the net has no HDF5Output layer" if path is None else f"not written to {path}"
    if path is not None and path.is_file():
        with h5py.File(path, "r") as out:
            written = {name: out[name][()] for name in out if isinstance(out[name], h5py.Dataset)}
    results = []
    for name, load in expected.items():
        label = f"{path.name if path else 'HDF5Output'}:{name}"
        ref = load()
        if name in written:
            results.append(compare_arrays("written_file", label, written[name], ref, tolerance))
        else:
            results.append(Comparison("written_file", label, ref.shape, float("nan"),
                                      float("nan"), tolerance.bound(ref), False, note))
    return results


def case_meta(reference: PathLike) -> dict:
    """The ``meta.json`` beside a reference HDF5 file ({} when there is none, and for
    flat dumps in a folder or an .npz, which are no reference case)."""
    path = Path(reference).parent / "meta.json"
    if not path.is_file() or Path(reference).is_dir() or zipfile.is_zipfile(reference):
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FcnwildError(f"cannot read the reference case description ({err})",
                           file=path) from None


@contextmanager
def case_workdir(reference: PathLike, workdir: PathLike | None = None) -> Iterator[Path | None]:
    """Run the block in the working directory a reference case was recorded in.

    Caffe ran each case with its folder as working directory; layers resolve relative
    file names there (HDF5Output writes there). The block runs in ``workdir`` (created
    if needed; a temporary folder, removed afterwards, when None) holding copies of the
    files the case's ``meta.json`` lists under ``files``, so the reference folder is
    only read. A reference without ``meta.json`` runs in ``workdir`` when one is given,
    else in the current directory (yields None then)."""
    meta = case_meta(reference)
    if workdir is None and not meta:
        yield None
        return
    temporary = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="fcnwild-compare-") if temporary else workdir)
    source = Path(reference).parent
    previous = os.getcwd()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in meta.get("files", {}):
            _copy_case_file(source, name, folder)
        os.chdir(folder)
        yield folder
    finally:
        os.chdir(previous)
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _copy_case_file(source: Path, name: str, folder: Path) -> None:
    src, dst = source / name, folder / name
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    elif src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    else:
        raise FcnwildError(f"meta.json lists the file '{name}', which is not in the case "
                           "folder", file=source)


def _blob(net, name: str, attr: str) -> np.ndarray | None:
    blob = net.blobs.get(name)
    return None if blob is None else getattr(blob, attr)


def _compare_params(net, layers: LayerArrays, kind: str, attr: str, tolerance: Tolerance
                    ) -> list[Comparison]:
    results = []
    for layer_name, blobs in layers.items():
        params = net.params.get(layer_name, [])
        for i, load in sorted(blobs.items()):
            ours = getattr(params[i], attr) if i < len(params) else None
            results.append(compare_arrays(kind, f"{layer_name}/{i}", ours, load(), tolerance))
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
