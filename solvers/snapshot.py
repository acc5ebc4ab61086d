"""Solver snapshots in Caffe's two formats.

BINARYPROTO: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (a SolverState
message); HDF5: ``.caffemodel.h5`` + ``.solverstate.h5`` with datasets ``iter``,
``current_step`` (int32, shape (1,)), ``learned_net`` (string) and group
``history/0..``. History blobs are streamed to and from disk like weights (no
Python object per float). Every file is written atomically. fcnwild adds one
field Caffe ignores: the RNG and data-position state a bit-identical resume needs.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from fcnwild.base.atomic import atomic_h5, atomic_write
from fcnwild.base.errors import SolverError, WeightsError
from fcnwild.nets import wire
from fcnwild.nets.weights import (
    H5_ERRORS,
    StoredBlob,
    blob_framing,
    h5_blob_shape,
    make_stored_blob,
    open_weights,
    scan_blob,
)

log = logging.getLogger("fcnwild.solver")
PathLike = str | os.PathLike
_ITER, _LEARNED_NET, _HISTORY, _CURRENT_STEP, _RESUME = 1, 2, 3, 4, 10000
_STATE_NAME = re.compile(r"_iter_([0-9]+)\.solverstate(\.h5)?")


@dataclass
class SolverStateFile:
    iter: int
    current_step: int
    learned_net: str | None
    history: list[StoredBlob]
    resume_state: str | None = None
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> "SolverStateFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_hdf5_state(path: PathLike) -> bool:
    return str(path).endswith(".h5")


def write_solverstate(path: PathLike, iteration: int, learned_net: str, current_step: int,
                      history: Sequence[np.ndarray], resume_state: str | None = None) -> None:
    if is_hdf5_state(path):
        _write_h5(path, iteration, learned_net, current_step, history, resume_state)
    else:
        _write_binary(path, iteration, learned_net, current_step, history, resume_state)


def _write_binary(path, iteration, learned_net, current_step, history, resume_state) -> None:
    name = learned_net.encode("utf-8")
    with atomic_write(path, "wb") as out:
        out.write(wire.key(_ITER, wire.VARINT) + wire.encode_varint(iteration & (2**64 - 1)))
        out.write(wire.length_prefix(_LEARNED_NET, len(name)) + name)
        for array in history:
            array = np.ascontiguousarray(array, dtype="<f4")
            head, tail = blob_framing(array)
            out.write(wire.length_prefix(_HISTORY, len(head) + array.nbytes + len(tail)))
            out.write(head)
            out.write(memoryview(array).cast("B"))
            out.write(tail)
        out.write(wire.key(_CURRENT_STEP, wire.VARINT) + wire.encode_varint(current_step))
        if resume_state is not None:
            text = resume_state.encode("utf-8")
            out.write(wire.length_prefix(_RESUME, len(text)) + text)


def _write_h5(path, iteration, learned_net, current_step, history, resume_state) -> None:
    with atomic_h5(path) as h5:
        h5.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
        h5.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
        h5.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = h5.create_group("history")
        for i, array in enumerate(history):
            group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))
        if resume_state is not None:
            h5.create_dataset("fcnwild_resume_state", data=np.bytes_(
                resume_state.encode("utf-8")))


def read_solverstate(path: PathLike) -> SolverStateFile:
    path = Path(path)
    if not path.is_file():
        raise SolverError("no such solver state file", file=path)
    try:
        state = _read_h5(path) if is_hdf5_state(path) else _read_binary(path)
    except wire.WireError as err:
        raise SolverError(f"corrupted or truncated solver state: {err}", file=path) from None
    except WeightsError as err:
        raise SolverError(f"corrupted solver state: {err.detail}", file=path) from None
    except UnicodeDecodeError as err:
        raise SolverError(f"corrupted solver state: a text field is not UTF-8 ({err})",
                          file=path) from None
    for name in ("iter", "current_step"):
        # int32 fields in caffe.proto; the wire walker hands over raw 64-bit varints
        value = getattr(state, name)
        if not 0 <= value < 2**31:
            state.close()
            raise SolverError(f"corrupted solver state: {name} is {value}, expected a "
                              "non-negative int32", file=path)
    return state


def _read_binary(path: Path) -> SolverStateFile:
    handle = open(path, "rb")
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        handle.close()
        raise SolverError("empty solver state file", file=path)
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    state = SolverStateFile(0, 0, None, [], None, [view.close, handle.close])
    try:
        for item in wire.iter_fields(view, 0, size):
            if item.number == _ITER and item.wire_type == wire.VARINT:
                state.iter = item.value
            elif item.number == _CURRENT_STEP and item.wire_type == wire.VARINT:
                state.current_step = item.value
            elif item.number == _LEARNED_NET and item.wire_type == wire.LENGTH:
                state.learned_net = bytes(view[item.value:item.end]).decode("utf-8")
            elif item.number == _HISTORY and item.wire_type == wire.LENGTH:
                index = len(state.history)
                state.history.append(make_stored_blob(view, handle, scan_blob(view, item), path,
                                                      f"history {index}", index))
            elif item.number == _RESUME and item.wire_type == wire.LENGTH:
                state.resume_state = bytes(view[item.value:item.end]).decode("utf-8")
    except (wire.WireError, WeightsError, UnicodeDecodeError):
        state.close()
        raise
    return state


def _read_h5(path: Path) -> SolverStateFile:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise SolverError(f"not a readable HDF5 solver state ({err})", file=path) from None
    state = SolverStateFile(0, 0, None, [], None, [h5.close])
    try:
        for name in ("iter", "current_step", "history"):
            if name not in h5:
                raise SolverError(f"HDF5 solver state lacks '{name}' (Caffe's layout: iter, "
                                  "current_step, learned_net, history/0..)", file=path)
        state.iter = int(_h5_single(h5, "iter", "iu", path))
        state.current_step = int(_h5_single(h5, "current_step", "iu", path))
        if "learned_net" in h5:
            state.learned_net = _h5_string(_h5_single(h5, "learned_net", "SOU", path))
        if "fcnwild_resume_state" in h5:
            state.resume_state = _h5_string(_h5_single(h5, "fcnwild_resume_state", "SOU",
                                                       path))
        group = h5["history"]
        if not isinstance(group, h5py.Group):
            raise SolverError("'history' must be a group of datasets 0, 1, ...", file=path)
        for i in range(len(group)):
            if str(i) not in group:
                raise SolverError(f"HDF5 solver state history lacks dataset '{i}'", file=path)
            dataset = group[str(i)]
            where = f"history blob {i}"

            def read(out: np.ndarray, dataset=dataset, where=where) -> None:
                try:
                    out[:] = np.asarray(dataset[()], dtype=np.float32).reshape(-1)
                except H5_ERRORS as err:
                    raise SolverError(f"cannot read {where} ({err})", file=path) from None
            state.history.append(StoredBlob(h5_blob_shape(dataset, where, path), False, read))
    except SolverError:
        state.close()
        raise
    except WeightsError as err:
        state.close()
        raise SolverError(f"corrupted HDF5 solver state: {err.detail}", file=path) from None
    except (*H5_ERRORS, AttributeError, IndexError) as err:
        # h5py reports a damaged file's internals as any of these
        state.close()
        raise SolverError(f"corrupted HDF5 solver state ({err})", file=path) from None
    except BaseException:
        state.close()
        raise
    return state


def _h5_single(h5: h5py.File, name: str, kinds: str, path: Path):
    """The one value of a scalar or one-element dataset whose dtype kind is one of
    ``kinds`` (numpy's codes: "iu" integers, "SOU" strings), checked before reading."""
    dataset = h5[name]
    if not isinstance(dataset, h5py.Dataset) or dataset.shape is None or dataset.size != 1 \
            or dataset.dtype.kind not in kinds:
        what = "an integer" if kinds == "iu" else "a string"
        raise SolverError(f"'{name}' must be a dataset of one value, {what}", file=path)
    return dataset[()].reshape(-1)[0] if dataset.shape else dataset[()]


def _h5_string(value) -> str:
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("utf-8")
    if isinstance(value, np.ndarray):
        return _h5_string(value.reshape(-1)[0])
    return str(value)


# ------------------------------------------------------------------ finding a snapshot to resume
def learned_net_path(state_path: PathLike, learned_net: str) -> Path:
    """The weights file a state names: beside the state when it is there, else as given
    (relative to the working directory), as Caffe resolves it."""
    learned = Path(learned_net)
    if not learned.is_absolute():
        beside = Path(state_path).parent / learned
        if os.path.exists(beside):
            return beside
    return learned


def list_snapshots(prefix: PathLike) -> list[Path]:
    """The solver states written under ``prefix`` (``<prefix>_iter_N.solverstate[.h5]``),
    newest iteration first."""
    prefix = Path(prefix)
    found = []
    with _folder_entries(prefix.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix.name):
                match = _STATE_NAME.fullmatch(entry.name[len(prefix.name):])
                if match and entry.is_file():
                    found.append((-int(match.group(1)), entry.name))
    return [prefix.parent / name for _, name in sorted(found)]


def check_snapshot(state_path: PathLike) -> None:
    """Raise SolverError unless the state and the weights it names are both complete
    files: every message and blob is whole and every declared size is backed by bytes."""
    state_path = Path(state_path)
    with read_solverstate(state_path) as state:
        learned_net = state.learned_net
    if learned_net:
        model = learned_net_path(state_path, learned_net)
        if not os.path.exists(model):
            raise SolverError(f"the snapshot's weights file '{learned_net}' does not exist",
                              file=state_path)
        try:
            open_weights(model).close()
        except WeightsError as err:
            raise SolverError(f"the snapshot's weights file is damaged: {err}",
                              file=state_path) from None


def latest_snapshot(prefix: PathLike, *, fallback: bool = False) -> Path | None:
    """The newest complete snapshot under ``prefix`` (its solver state), None if there is none.

    A kill between writing a snapshot's weights and its state leaves weights without a
    state: that snapshot does not count. A state that is itself damaged is an error
    naming it, unless ``fallback`` lets the search go on to older snapshots."""
    for path in list_snapshots(prefix):
        try:
            check_snapshot(path)
            return path
        except SolverError as err:
            if not fallback:
                raise SolverError(f"{err.detail}. It is the newest snapshot under {prefix}; "
                                  "resume from an older one by name, or let fcnwild fall back "
                                  "to the newest complete one (train --snapshot-fallback)",
                                  file=path) from None
            log.warning("Skipping damaged snapshot %s", err)
    return None


def remove_stale_temporaries(prefix: PathLike) -> list[Path]:
    """Delete the temporary files that killed snapshot writes left under ``prefix``
    (base/atomic.py names them ``.<final name>.<random>.tmp``); the removed paths."""
    prefix = Path(prefix)
    removed = []
    with _folder_entries(prefix.parent) as entries:
        for entry in entries:
            if entry.name.startswith(f".{prefix.name}_iter_") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _folder_entries(folder: Path):
    """os.scandir of ``folder``, or no entries when it does not exist yet."""
    try:
        return os.scandir(folder)
    except FileNotFoundError:
        return contextlib.nullcontext(())
