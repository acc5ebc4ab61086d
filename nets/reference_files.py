"""Reading a reference (arrays recorded from Caffe) in any of the formats users have.

One reader, ``open_reference(path, net)``, gives the ``Reference`` that
``compare_with_reference`` drives the net with, from

* the full layout (an HDF5 file with the groups ``inputs/``, ``forward/``,
  ``backward/``, ``top_diff/``, ``params/``, ``param_diffs/``,
  ``params_after_forward/``, ``forward_calls/<k>/``, ``aux/``; see
  ``nets/reference.py``), as the fixtures and ``fcnwild compare
  --emit-caffe-script`` record it;
* a flat dump, one array per name: an ``.npz`` file, a folder of ``.npy``
  files (``<name>.npy``; a name with ``/``, as GoogLeNet's ``inception_3a/1x1``,
  is a sub-folder) or an HDF5 file without those groups (one dataset per name,
  a ``/`` in a name again a group). What pycaffe users save with
  ``np.savez('ref.npz', **{k: b.data for k, b in net.blobs.items()})``.

Names in a flat dump (``FLAT_NAMING``): ``<blob>`` is the blob's data (fed when the
blob is a net input, compared after forward otherwise), ``<blob>@diff`` its diff
after backward (for an output without a loss weight also the diff backward starts
from, as ``net.backward(**{blob: diff})`` in pycaffe), ``<layer>@param<i>`` the
layer's i-th param (``net.params[layer][i].data``) and ``<layer>@param<i>@diff``
its diff. Caffe forbids no character in blob or layer names (GoogLeNet's have
``/``), so any suffix rule could in principle meet a real name: a name that is a
blob of the net is always that blob's data, and a net where a name could mean two
arrays (blobs ``x`` and ``x@diff``) is refused with a pointer to the full layout.
A name that is no blob or layer of the net is an error: it cannot be told what it
was meant to be, and comparing without it would report a pass that was not checked.
"""
from __future__ import annotations

import contextlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from fcnwild.base.errors import FcnwildError

PathLike = str | os.PathLike
Loader = Callable[[], np.ndarray]          # reads one array when the comparison needs it
LayerArrays = dict[str, dict[int, Loader]]  # layer -> param index -> array

FULL_LAYOUT_GROUPS = ("inputs", "forward", "backward", "top_diff", "params", "param_diffs",
                      "params_after_forward", "forward_calls", "aux")

FLAT_NAMING = ("<blob> = the blob's data (a net input is fed, any other blob compared "
               "after forward); <blob>@diff = its diff after backward (an output without "
               "a loss weight starts backward from it); <layer>@param<i> = the layer's "
               "i-th param, <layer>@param<i>@diff = its diff")

_PARAM_KEY = re.compile(r"^(?P<layer>.+)@param(?P<index>\d+)(?P<diff>@diff)?$")


@dataclass
class Reference:
    """A reference's arrays by role (the full layout's groups; flat dumps fill some)."""
    source: Path
    inputs: dict[str, Loader] = field(default_factory=dict)
    forward: dict[str, Loader] = field(default_factory=dict)
    backward: dict[str, Loader] = field(default_factory=dict)
    top_diff: dict[str, Loader] = field(default_factory=dict)
    params: LayerArrays = field(default_factory=dict)
    param_diffs: LayerArrays = field(default_factory=dict)
    params_after_forward: LayerArrays = field(default_factory=dict)
    forward_calls: dict[int, dict[str, Loader]] = field(default_factory=dict)
    aux: dict[str, dict[str, Loader]] = field(default_factory=dict)


@contextlib.contextmanager
def open_reference(path: PathLike, net) -> Iterator[Reference]:
    """The reference at ``path`` (full layout or flat dump; flat names are resolved
    against ``net``); its files stay open, for reading on demand, inside the block."""
    path = Path(path)
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            arrays = _npy_folder(path)
        elif not path.is_file():
            raise FcnwildError("no such reference file or folder", file=path)
        elif h5py.is_hdf5(path):
            h5 = stack.enter_context(_open_h5(path))
            if isinstance(h5.get("forward"), h5py.Group):
                yield _full_layout(h5, path)
                return
            arrays = _datasets(h5)
        elif zipfile.is_zipfile(path):
            npz = stack.enter_context(np.load(path, allow_pickle=False))
            arrays = {name: (lambda name=name: npz[name]) for name in npz.files}
        else:
            raise FcnwildError("not a reference this reads: expected an HDF5 file, an .npz "
                               "file or a folder of .npy files", file=path)
        yield _flat_dump(arrays, net, path)


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise FcnwildError(f"cannot open reference blobs ({err})", file=path) from None
    with h5:
        yield h5


def _datasets(group: h5py.Group) -> dict[str, Loader]:
    """Every dataset under ``group`` by its path relative to it (``a/b`` for a name
    with ``/``: HDF5 stores it as a group)."""
    found: dict[str, Loader] = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            found[name] = lambda item=item: item[()]
    group.visititems(visit)
    return found


def _layer_arrays(arrays: dict[str, Loader], path: Path, group: str) -> LayerArrays:
    """``<layer>/<i>`` names -> {layer: {i: array}} (a layer name may hold ``/``)."""
    layers: LayerArrays = {}
    for name, load in arrays.items():
        layer, _, index = name.rpartition("/")
        if not layer or not index.isdigit():
            raise FcnwildError(f"'{group}/{name}' is not '{group}/<layer>/<param index>'",
                               file=path)
        layers.setdefault(layer, {})[int(index)] = load
    return layers


def _full_layout(h5: h5py.File, path: Path) -> Reference:
    groups = {name: _datasets(h5[name]) if isinstance(h5.get(name), h5py.Group) else {}
              for name in FULL_LAYOUT_GROUPS}
    calls: dict[int, dict[str, Loader]] = {}
    for name, load in groups["forward_calls"].items():
        call, _, blob = name.partition("/")
        calls.setdefault(int(call), {})[blob] = load
    aux: dict[str, dict[str, Loader]] = {}
    for name, load in groups["aux"].items():
        kind, _, key = name.partition("/")
        aux.setdefault(kind, {})[key] = load
    return Reference(
        path, inputs=groups["inputs"], forward=groups["forward"],
        backward=groups["backward"], top_diff=groups["top_diff"],
        params=_layer_arrays(groups["params"], path, "params"),
        param_diffs=_layer_arrays(groups["param_diffs"], path, "param_diffs"),
        params_after_forward=_layer_arrays(groups["params_after_forward"], path,
                                           "params_after_forward"),
        forward_calls=calls, aux=aux)


def _npy_folder(folder: Path) -> dict[str, Loader]:
    arrays = {file.relative_to(folder).with_suffix("").as_posix():
              (lambda file=file: np.load(file, allow_pickle=False))
              for file in sorted(folder.rglob("*.npy"))}
    if not arrays:
        raise FcnwildError("the folder holds no .npy files (one <name>.npy per array)",
                           file=folder)
    return arrays


def _flat_dump(arrays: dict[str, Loader], net, path: Path) -> Reference:
    """Sort a flat dump's names into the reference's roles by the naming rule."""
    ref = Reference(path)
    unknown = []
    weighted = {name for name, weight in net.loss_weights.items() if weight}
    for name, load in arrays.items():
        meaning = _meaning(name, net)
        if meaning is None:
            unknown.append(name)
            continue
        role, target = meaning
        if role == "data":
            (ref.inputs if target in net.inputs else ref.forward)[target] = load
        elif role == "diff":
            ref.backward[target] = load
            if target in net.outputs and target not in weighted:
                ref.top_diff[target] = load
        else:
            layer, index = target
            group = ref.params if role == "param" else ref.param_diffs
            group.setdefault(layer, {})[index] = load
    if unknown:
        shown = ", ".join(sorted(unknown)[:10]) + (" ..." if len(unknown) > 10 else "")
        raise FcnwildError(f"{len(unknown)} array name(s) name no blob or layer of the net: "
                           f"{shown}. Names in a flat dump: {FLAT_NAMING}", file=path)
    return ref


def _meaning(name: str, net) -> tuple[str, object] | None:
    """("data" | "diff", blob) or ("param" | "param_diff", (layer, index)); None when the
    name means nothing in ``net``."""
    readings = []
    if name in net.blobs:
        readings.append(("data", name))
    if name.endswith("@diff") and name[:-len("@diff")] in net.blobs:
        readings.append(("diff", name[:-len("@diff")]))
    match = _PARAM_KEY.match(name)
    if match and match["layer"] in net.params:
        role = "param_diff" if match["diff"] else "param"
        readings.append((role, (match["layer"], int(match["index"]))))
    if len(readings) > 1:
        raise FcnwildError(f"the array name '{name}' is ambiguous in this net (it could be "
                           f"{' or '.join(r[0] for r in readings)}); record the reference in "
                           "the full HDF5 layout (fcnwild compare --emit-caffe-script)")
    return readings[0] if readings else None
