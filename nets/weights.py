"""Caffe weights files: ``.caffemodel`` (binary NetParameter) and Caffe's HDF5 layout.

Reading walks the caffemodel's wire format (nets/wire.py) to find every blob's
byte range, then reads each array straight from the file into numpy memory:
no Python object per float, and at most one copy of the weights in memory
(``StoredBlob.load_into`` can even read into a parameter's own storage).

HDF5 weights follow Net::ToHDF5: ``/data/<layer>/<i>`` datasets (``/diff``
alongside when diffs are written), one group per layer.
"""
from __future__ import annotations

import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import h5py
import numpy as np
import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.atomic import atomic_h5, atomic_write
from fcnwild.base.errors import WeightsError
from fcnwild.nets import wire

PathLike = str | os.PathLike

# Field numbers of the messages walked by hand (see base/caffe.proto).
_NET_LAYER_V2, _NET_LAYER_V1 = 100, 2
_V2_NAME, _V2_BLOBS = 1, 7
_V1_V0LAYER, _V1_NAME, _V1_BLOBS = 1, 4, 6
_V0_NAME, _V0_BLOBS = 1, 50
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1

# A blob's index within its layer: ASCII digits only (str.isdigit also accepts "²").
_INDEX = re.compile(r"[0-9]+")
# Deflate, the compression every HDF5 build has, cannot expand data more than ~1032x.
_MAX_COMPRESSION_RATIO = 1032
# What h5py raises for a damaged file's internals (bad heaps, link loops, missing chunks).
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)

HDF5_SUFFIXES = (".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pth")


def is_hdf5(path: PathLike) -> bool:
    return str(path).lower().endswith(HDF5_SUFFIXES)


def is_torch(path: PathLike) -> bool:
    return str(path).lower().endswith(TORCH_SUFFIXES)


@dataclass
class StoredBlob:
    """One param blob in a weights file: its shape and how to read its values."""
    shape: tuple[int, ...]
    legacy_shape: bool              # shape given as num/channels/height/width
    _reader: Callable[[np.ndarray], None]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def load(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        self._reader(out.reshape(-1))
        return out

    def load_into(self, out: np.ndarray) -> None:
        """Read the values into ``out`` (a C-contiguous float32 array of ``count`` elements)."""
        if out.dtype != np.float32 or not out.flags.c_contiguous or out.size != self.count:
            raise ValueError("load_into needs a C-contiguous float32 array of the blob's size")
        self._reader(out.reshape(-1))

    def fits(self, target_shape: Sequence[int]) -> bool:
        """Caffe's Blob::ShapeEquals(BlobProto): legacy 4-D shapes align from the right."""
        target = tuple(int(s) for s in target_shape)
        if not self.legacy_shape:
            return target == self.shape
        if len(target) > 4:
            return False
        return (1,) * (4 - len(target)) + target == self.shape


class WeightsFile(Mapping[str, list]):
    """Layer name -> its stored blobs, in file order; arrays are read on demand.

    An HDF5 file may leave a gap (None) where a shared param is stored under its owner.

    Use as a context manager (or call ``close``) to release the file.
    """

    def __init__(self, path: PathLike, allows_gaps: bool = False) -> None:
        self.path = Path(path)
        self.allows_gaps = allows_gaps
        self._layers: dict[str, list[StoredBlob | None]] = {}
        self._closers: list[Callable[[], None]] = []

    def __getitem__(self, name: str) -> list[StoredBlob | None]:
        return self._layers[name]

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> "WeightsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def arrays(self) -> dict[str, list[np.ndarray]]:
        return {name: [None if blob is None else blob.load() for blob in blobs]
                for name, blobs in self._layers.items()}


def open_weights(path: PathLike) -> WeightsFile:
    """Open a .caffemodel, a Caffe HDF5 weights file (told by its content) or a torch
    state dict for reading."""
    path = Path(path)
    if not path.exists():
        raise WeightsError("no such weights file", file=path)
    if path.is_dir():
        raise WeightsError("is a directory, expected a .caffemodel or .caffemodel.h5 file",
                           file=path)
    if is_torch(path):
        return _open_torch(path)
    # Caffe's CopyTrainedLayersFrom tells HDF5 from a binary proto by content (H5Fis_hdf5).
    if h5py.is_hdf5(path):
        return _open_hdf5(path)
    if looks_like_text_prototxt(path):
        raise WeightsError("is a text prototxt (a net definition), not a caffemodel: give it as "
                           "the net (--model, -model, net:) and the trained .caffemodel as the "
                           "weights", file=path)
    return _open_caffemodel(path)


_TEXT_FIELD = re.compile(r"^\s*(name|layers?|input|input_dim|input_shape|net|train_net|base_lr)"
                         r"\s*[:{]", re.MULTILINE)


def looks_like_text_prototxt(path: Path) -> bool:
    """Whether the file starts as protobuf text format. A binary NetParameter cannot pass: its
    layer fields' tags (0x12, 0xa2 0x06) are a control byte or invalid UTF-8."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:   # not merely a character cut by the 4 KiB boundary
            return False
        text = head[:err.start].decode("utf-8")
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in text):
        return False
    return bool(_TEXT_FIELD.search(text))


def read_weights(path: PathLike) -> dict[str, list[np.ndarray | None]]:
    """All arrays of a weights file, by layer name (loads everything into memory)."""
    with open_weights(path) as weights:
        return weights.arrays()


# --- .caffemodel ---------------------------------------------------------------------------
def _open_caffemodel(path: Path) -> WeightsFile:
    result = WeightsFile(path)
    handle = open(path, "rb")
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        handle.close()
        raise WeightsError("empty file, expected a binary NetParameter (.caffemodel)", file=path)
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    result._closers.append(view.close)
    result._closers.append(handle.close)
    try:
        for field in wire.iter_fields(view, 0, size):
            if field.wire_type != wire.LENGTH:
                continue
            if field.number == _NET_LAYER_V2:
                name, blobs = _scan_layer(view, field, _V2_NAME, _V2_BLOBS)
            elif field.number == _NET_LAYER_V1:
                name, blobs = _scan_v1_layer(view, field)
            else:
                continue
            if blobs:
                if name in result._layers:
                    raise WeightsError(f"two layers named '{name}' carry weights", file=path)
                result._layers[name] = [make_stored_blob(view, handle, spans, path, name, i)
                                        for i, spans in enumerate(blobs)]
    except wire.WireError as err:
        result.close()
        raise WeightsError(f"corrupted or truncated caffemodel ({size} bytes): {err}",
                           file=path) from None
    except (WeightsError, UnicodeDecodeError) as err:
        result.close()
        if isinstance(err, WeightsError):
            raise
        raise WeightsError(f"corrupted caffemodel: a layer name is not UTF-8 ({err})",
                           file=path) from None
    if not result._layers and not _has_layers(view, size):
        result.close()
        raise WeightsError("holds no layers: not a caffemodel (binary NetParameter)", file=path)
    return result


def _has_layers(view, size: int) -> bool:
    return any(f.number in (_NET_LAYER_V1, _NET_LAYER_V2) for f in wire.iter_fields(view, 0, size))


def _scan_layer(view, layer: wire.Field, name_field: int, blobs_field: int):
    name, blobs = "", []
    for field in wire.iter_fields(view, layer.value, layer.end):
        if field.number == name_field and field.wire_type == wire.LENGTH:
            name = bytes(view[field.value:field.end]).decode("utf-8")
        elif field.number == blobs_field and field.wire_type == wire.LENGTH:
            blobs.append(scan_blob(view, field))
    return name, blobs


def _scan_v1_layer(view, layer: wire.Field):
    name, blobs = _scan_layer(view, layer, _V1_NAME, _V1_BLOBS)
    for field in wire.iter_fields(view, layer.value, layer.end):
        if field.number == _V1_V0LAYER and field.wire_type == wire.LENGTH:
            v0_name, v0_blobs = _scan_layer(view, field, _V0_NAME, _V0_BLOBS)
            name = name or v0_name
            blobs = blobs + v0_blobs     # V0 -> V1 upgrade appends the V0 layer's blobs
    return name, blobs


@dataclass
class _BlobSpans:
    dims: list[int] | None
    legacy: dict[int, int]
    segments: list[tuple[int, int, str, int]]   # (start, count, dtype, stride in bytes)


def scan_blob(view, blob: wire.Field) -> _BlobSpans:
    spans = _BlobSpans(None, {}, [])
    pos = blob.value
    while pos < blob.end:
        field, pos = wire.read_field(view, pos, blob.end)
        number, kind = field.number, field.wire_type
        if number == _BLOB_SHAPE and kind == wire.LENGTH:
            spans.dims = spans.dims or []
            for dim in wire.iter_fields(view, field.value, field.end):
                if dim.number == _SHAPE_DIM and dim.wire_type == wire.LENGTH:
                    spans.dims.extend(wire.packed_varints(view, dim.value, dim.end))
                elif dim.number == _SHAPE_DIM and dim.wire_type == wire.VARINT:
                    spans.dims.append(dim.value)
        elif number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) \
                and kind == wire.VARINT:
            spans.legacy[number] = dim_value(field.value)
        elif number in (_BLOB_DATA, _BLOB_DOUBLE_DATA):
            dtype, width = ("<f4", 4) if number == _BLOB_DATA else ("<f8", 8)
            if kind == wire.LENGTH:
                if (field.end - field.value) % width:
                    raise wire.WireError(f"packed data of {field.end - field.value} bytes is "
                                         f"not a whole number of {width}-byte values")
                spans.segments.append((field.value, (field.end - field.value) // width, dtype,
                                       width))
            elif kind in (wire.FIXED32, wire.FIXED64):
                # Non-packed repeated floats (old writers): one key byte per value.
                count, pos = wire.unpacked_fixed_run(view, field.value, blob.end, number, kind)
                spans.segments.append((field.value, count, dtype, width + 1))
    return spans


def dim_value(raw: int) -> int:
    """Varints of int32/int64 fields: negative values arrive as 64-bit two's complement."""
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def make_stored_blob(view, handle, spans: _BlobSpans, path: Path, layer: str, index: int
               ) -> StoredBlob:
    legacy = bool(spans.legacy)
    if legacy:
        shape = tuple(spans.legacy.get(f, 0) for f in
                      (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH))
    else:
        shape = tuple(dim_value(d) for d in (spans.dims or []))
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob {index} has a negative dimension {shape}", file=path,
                           layer=layer)
    total = sum(count for _, count, _, _ in spans.segments)
    expected = int(np.prod(shape, dtype=object)) if shape else (0 if legacy else 1)
    if spans.dims is None and not legacy:
        # No shape at all: Caffe gives the blob shape [] only when it is empty.
        expected = 0 if total == 0 else total
        shape = (total,) if total else ()
    if expected != total:
        raise WeightsError(f"blob {index} declares shape {shape} ({expected} values) but "
                           f"holds {total} values", file=path, layer=layer)
    segments = list(spans.segments)

    def read(out: np.ndarray) -> None:
        offset = 0
        for start, count, dtype, stride in segments:
            target = out[offset:offset + count]
            if dtype == "<f4" and stride == 4 and target.flags.c_contiguous:
                got = _read_at(handle, start, memoryview(target).cast("B"))
                if got != 4 * count:
                    raise WeightsError(f"blob {index}: file ended while reading its values",
                                       file=path, layer=layer)
            else:
                width = 4 if dtype == "<f4" else 8
                raw = np.frombuffer(view, dtype=np.uint8, count=count * stride, offset=start)
                values = raw.reshape(count, stride)[:, :width].copy().view(dtype).reshape(-1)
                target[:] = values
            offset += count

    return StoredBlob(shape=shape, legacy_shape=legacy, _reader=read)


# A large blob (VGG16's fc6: 400 MB) is read in chunks on several threads: one core's
# copy from the page cache reaches about half the memory bandwidth that two do.
_PARALLEL_READ_CHUNK = 16 << 20
_READ_THREADS = min(4, os.cpu_count() or 1)


def _read_at(handle, offset: int, out: memoryview) -> int:
    """Read ``len(out)`` bytes at ``offset`` into ``out``; returns how many were read."""
    size = len(out)
    if size <= _PARALLEL_READ_CHUNK or _READ_THREADS < 2 or not hasattr(os, "preadv"):
        handle.seek(offset)
        return handle.readinto(out) or 0
    fd = handle.fileno()
    starts = range(0, size, _PARALLEL_READ_CHUNK)

    def read_chunk(start: int) -> int:
        chunk = out[start:start + _PARALLEL_READ_CHUNK]
        done = 0
        while done < len(chunk):        # pread may return less than asked
            got = os.preadv(fd, [chunk[done:]], offset + start + done)
            if got == 0:
                break                   # end of file
            done += got
        return done

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        return sum(pool.map(read_chunk, starts))


def write_caffemodel(path: PathLike, net: caffe_pb2.NetParameter,
                     blobs: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Write ``net`` (its layers' own ``blobs`` are ignored) with ``blobs[layer]`` as weights.

    Blobs are written in Caffe's current format (BlobShape + packed float data),
    streamed from the arrays without building a protobuf message around them.
    Field order is protobuf's (by field number), so the bytes are what Caffe writes.
    """
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net)
    header.ClearField("layer")
    header.ClearField("layers")
    with atomic_write(path, "wb") as out:
        out.write(header.SerializeToString())
        for layer in net.layer:
            _write_layer(out, layer, [np.ascontiguousarray(a, dtype="<f4")
                                      for a in blobs.get(layer.name, ())])


def _write_layer(out, layer: caffe_pb2.LayerParameter, arrays: list[np.ndarray]) -> None:
    bare = caffe_pb2.LayerParameter()
    bare.CopyFrom(layer)
    bare.ClearField("blobs")
    encoded = bare.SerializeToString()
    # Fields are serialised in number order: blobs (7) go between fields <7 and >7.
    split = pos = 0
    while pos < len(encoded):
        field, after = wire.read_field(encoded, pos, len(encoded))
        if field.number > _V2_BLOBS:
            break
        pos = split = after
    else:
        split = len(encoded)
    parts = [blob_framing(a) for a in arrays]
    blob_sizes = [len(head) + a.nbytes + len(tail) for (head, tail), a in zip(parts, arrays)]
    body = len(encoded) + sum(len(wire.length_prefix(_V2_BLOBS, s)) + s for s in blob_sizes)
    out.write(wire.length_prefix(_NET_LAYER_V2, body))
    out.write(encoded[:split])
    for (head, tail), size, array in zip(parts, blob_sizes, arrays):
        out.write(wire.length_prefix(_V2_BLOBS, size))
        out.write(head)
        out.write(memoryview(array).cast("B"))
        out.write(tail)
    out.write(encoded[split:])


def blob_framing(array: np.ndarray) -> tuple[bytes, bytes]:
    """BlobProto bytes around the raw float payload: data's key (field 5) before it,
    the shape (field 7) after it — protobuf's field-number order, as Caffe writes."""
    dims = b"".join(wire.encode_varint(int(d)) for d in array.shape)
    shape_msg = wire.length_prefix(_SHAPE_DIM, len(dims)) + dims if array.shape else b""
    shape = wire.length_prefix(_BLOB_SHAPE, len(shape_msg)) + shape_msg
    head = wire.length_prefix(_BLOB_DATA, array.nbytes) if array.size else b""
    return head, shape


# --- HDF5 ----------------------------------------------------------------------------------
def _open_hdf5(path: Path) -> WeightsFile:
    result = WeightsFile(path, allows_gaps=True)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise WeightsError(f"not a readable HDF5 file ({err})", file=path) from None
    result._closers.append(h5.close)
    try:
        data = h5.get("data")
        if not isinstance(data, h5py.Group):
            raise WeightsError("HDF5 weights need a group '/data' (Caffe's Net::ToHDF5 layout) "
                               f"but the file holds {sorted(h5.keys())}", file=path)
        groups = list(data.items())
        total = sum(len(group) for _, group in groups if isinstance(group, h5py.Group))
        for name, group in groups:
            result._layers[name] = _h5_layer_blobs(path, name, group, total)
    except WeightsError:
        result.close()
        raise
    except H5_ERRORS as err:
        result.close()
        raise WeightsError(f"corrupted HDF5 weights file ({type(err).__name__}: {err})",
                           file=path) from None
    return result


def _h5_layer_blobs(path: Path, name: str, group, total: int) -> list[StoredBlob | None]:
    if not isinstance(group, h5py.Group) or any(not _INDEX.fullmatch(k) for k in group.keys()):
        raise WeightsError(f"'/data/{name}' must be a group of datasets named 0, 1, ...",
                           file=path, layer=name)
    indices = {int(k) for k in group.keys()}
    check_gap_index(max(indices, default=-1), total, path, name)
    blobs: list[StoredBlob | None] = []
    for i in range(1 + max(indices, default=-1)):
        if i not in indices:
            blobs.append(None)   # a shared param: Caffe writes it only under its owner
            continue
        where = f"'/data/{name}/{i}'"
        dataset = group.get(str(i))
        if dataset is None:
            raise WeightsError(f"{where} is a link to nothing (a dangling soft or external "
                               "link)", file=path, layer=name)
        blobs.append(StoredBlob(h5_blob_shape(dataset, where, path, layer=name), False,
                                _h5_reader(dataset, where, path, name)))
    return blobs


def check_gap_index(index: int, total: int, path: Path, layer: str) -> None:
    """Files that store a shared param only under its owner leave gaps in a layer's
    indices; a gap stands for a blob stored elsewhere in the file, so no index can
    reach past the file's whole count of blobs (and a lying index cannot make us
    build a list of billions of gaps)."""
    if index >= total:
        raise WeightsError(f"blob index {index} of a file holding {total} blobs", file=path,
                           layer=layer)


def h5_blob_shape(dataset, where: str, path: Path, layer: str | None = None
                  ) -> tuple[int, ...]:
    """The shape of a float dataset whose values are really stored in the file.

    Checked before anything is allocated: an HDF5 dataset may declare any shape
    and store nothing (unwritten data reads as the fill value), keep its values
    in other files (external or virtual storage), or be null or non-numeric."""
    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f" \
            or dataset.shape is None:
        raise WeightsError(f"{where} is not a float dataset", file=path, layer=layer)
    shape = tuple(int(d) for d in dataset.shape)
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() or plist.get_layout() == h5py.h5d.VIRTUAL:
        raise WeightsError(f"{where} keeps its values in other files (external or virtual "
                           "storage); weights must be stored in the file itself", file=path,
                           layer=layer)
    declared = int(np.prod(shape, dtype=object)) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    limit = stored * (_MAX_COMPRESSION_RATIO if plist.get_nfilters() else 1)
    if declared > limit:
        raise WeightsError(f"{where} declares shape {shape} ({declared} bytes) but the file "
                           f"stores {stored} bytes for it", file=path, layer=layer)
    return shape


def _h5_reader(dataset: h5py.Dataset, where: str, path: Path, layer: str
               ) -> Callable[[np.ndarray], None]:
    def read(out: np.ndarray) -> None:
        try:
            if dataset.dtype == np.float32:
                dataset.read_direct(out.reshape(dataset.shape))
            else:
                out[:] = dataset[()].astype(np.float32).reshape(-1)
        except H5_ERRORS as err:
            raise WeightsError(f"cannot read {where} ({type(err).__name__}: {err})",
                               file=path, layer=layer) from None
    return read


def write_caffemodel_h5(path: PathLike, layer_names: Iterable[str],
                        blobs: Mapping[str, Mapping[int, np.ndarray]],
                        diffs: Mapping[str, Mapping[int, np.ndarray]] | None = None) -> None:
    """Caffe's Net::ToHDF5: a group per layer under /data (and /diff); shared params are
    written only by their owner, so ``blobs[layer]`` maps param index -> array."""
    with atomic_h5(path) as h5:
        data = h5.create_group("data")
        diff = h5.create_group("diff") if diffs is not None else None
        for name in layer_names:
            group = data.create_group(name)
            for i, array in blobs.get(name, {}).items():
                group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))
            if diff is not None:
                dgroup = diff.create_group(name)
                for i, array in diffs.get(name, {}).items():
                    dgroup.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))


# --- torch state dict ------------------------------------------------------------------------
def _open_torch(path: Path) -> WeightsFile:
    """A flat state dict {"<layer>/<i>": tensor}, loaded with weights_only=True (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds here; all mean "not a usable file"
        raise WeightsError(f"not a loadable torch weights file ({type(err).__name__}: {err})",
                           file=path) from None
    if not isinstance(state, dict):
        raise WeightsError(f"expected a state dict {{'<layer>/<i>': tensor}}, found "
                           f"{type(state).__name__}", file=path)
    result = WeightsFile(path, allows_gaps=True)
    grouped: dict[str, dict[int, object]] = {}
    for key, tensor in state.items():
        layer, _, index = str(key).rpartition("/")
        if not layer or not _INDEX.fullmatch(index) or not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"state dict entry {key!r} is not '<layer>/<index>' -> tensor",
                               file=path)
        grouped.setdefault(layer, {})[int(index)] = _tensor_blob(tensor, key, path)
    for layer, by_index in grouped.items():
        check_gap_index(max(by_index), len(state), path, layer)
        result._layers[layer] = [by_index.get(i) for i in range(1 + max(by_index))]
    return result


def _tensor_blob(tensor, key: str, path: Path) -> StoredBlob:
    """A dense floating-point tensor whose elements are all in its stored bytes: a
    stride-0 (expanded) view of a few bytes must not turn into terabytes here."""
    if tensor.layout != torch.strided or not tensor.is_floating_point():
        raise WeightsError(f"state dict entry {key!r} is a {tensor.layout} {tensor.dtype} "
                           "tensor; expected a dense floating-point tensor", file=path)
    stored = tensor.untyped_storage().nbytes()
    if tensor.numel() * tensor.element_size() > stored:
        raise WeightsError(f"state dict entry {key!r} declares shape {tuple(tensor.shape)} "
                           f"but its storage holds {stored} bytes", file=path)
    shape = tuple(tensor.shape)

    def read(out: np.ndarray) -> None:
        out[:] = tensor.detach().float().contiguous().numpy().reshape(-1)
    return StoredBlob(shape, False, read)


def write_torch_weights(path: PathLike, blobs: Mapping[str, Mapping[int, np.ndarray]]) -> None:
    state = {f"{layer}/{i}": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
             for layer, arrays in blobs.items() for i, a in arrays.items()}
    with atomic_write(path, "wb") as out:
        torch.save(state, out)
