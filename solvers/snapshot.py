"""Solver snapshots in Caffe's two formats.

BINARYPROTO: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (a SolverState
message); HDF5: ``.caffemodel.h5`` + ``.solverstate.h5`` with datasets ``iter``,
``current_step`` (int32, shape (1,)), ``learned_net`` (string) and group
``history/0..``. History blobs are streamed to and from disk like weights (no
Python object per float). Every file is written atomically. fcnwild adds one
field Caffe ignores: the RNG and data-position state a bit-identical resume needs.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from fcnwild.nets import wire
from fcnwild.nets.atomic import atomic_path, atomic_write
from fcnwild.nets.errors import SolverError, WeightsError
from fcnwild.nets.weights import StoredBlob, blob_framing, make_stored_blob, scan_blob

PathLike = str | os.PathLike
_ITER, _LEARNED_NET, _HISTORY, _CURRENT_STEP, _RESUME = 1, 2, 3, 4, 10000


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
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
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
        return _read_h5(path) if is_hdf5_state(path) else _read_binary(path)
    except wire.WireError as err:
        raise SolverError(f"corrupted or truncated solver state: {err}", file=path) from None
    except WeightsError as err:
        raise SolverError(f"corrupted solver state: {err.detail}", file=path) from None


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
        state.iter = int(np.asarray(h5["iter"][()]).reshape(-1)[0])
        state.current_step = int(np.asarray(h5["current_step"][()]).reshape(-1)[0])
        if "learned_net" in h5:
            state.learned_net = _h5_string(h5["learned_net"][()])
        if "fcnwild_resume_state" in h5:
            state.resume_state = _h5_string(h5["fcnwild_resume_state"][()])
        group = h5["history"]
        for i in range(len(group)):
            if str(i) not in group:
                raise SolverError(f"HDF5 solver state history lacks dataset '{i}'", file=path)
            dataset = group[str(i)]

            def read(out: np.ndarray, dataset=dataset, i=i) -> None:
                try:
                    out[:] = np.asarray(dataset[()], dtype=np.float32).reshape(-1)
                except (OSError, RuntimeError, ValueError, TypeError) as err:
                    raise SolverError(f"cannot read history blob {i} ({err})",
                                      file=path) from None
            state.history.append(StoredBlob(tuple(int(d) for d in dataset.shape), False, read))
    except SolverError:
        state.close()
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        # h5py reports a damaged file's internals as any of these
        state.close()
        raise SolverError(f"corrupted HDF5 solver state ({err})", file=path) from None
    except BaseException:
        state.close()
        raise
    return state


def _h5_string(value) -> str:
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("utf-8")
    if isinstance(value, np.ndarray):
        return _h5_string(value.reshape(-1)[0])
    return str(value)
