"""Data layers: Input (fed by the Net), HDF5Data and DummyData.

Data layers make tensors themselves; a non-persistent buffer follows the
layer across ``.to(device)``/``.double()`` so the tops land on the net's
device and dtype.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError
from fcnwild.layers.base import TEST, Layer, LayerContext, Shape, find_input
from fcnwild.layers.fillers import fill
from fcnwild.layers.registry import register


class _DataLayer(Layer):
    num_bottoms = (0, 0)
    num_tops = (1, None)

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def check_source_and_batch(self, field: str) -> None:
        """Caffe's checks of a data layer's ``source`` and ``batch_size`` in ``field``."""
        p = getattr(self.param, field)
        if not p.source:
            raise self.error(f"{field}.source is not set")
        if p.batch_size == 0:
            raise self.error(f"{field}.batch_size must be > 0")

    def _like_net(self, tensor: Tensor) -> Tensor:
        return tensor.to(device=self._anchor.device, dtype=self._anchor.dtype)


@register("Input")
class Input(_DataLayer):
    """Declares the net's input blobs: ``input_param.shape`` once for all tops, or
    once per top. The Net writes these blobs; the layer itself computes nothing."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shapes = self.param.input_param.shape
        n_tops = len(self.param.top)
        if len(shapes) not in (0, 1, n_tops):
            raise self.error(f"input_param.shape is given {len(shapes)} times for {n_tops} tops; "
                             "give it once, or once per top")
        if any(d < 0 for s in shapes for d in s.dim):
            raise self.error("input shapes must not have negative dims")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shapes = self.param.input_param.shape
        if not shapes:          # Caffe leaves the tops empty until they are reshaped
            return [(0,)] * len(self.param.top)
        return [tuple(int(d) for d in shapes[0 if len(shapes) == 1 else i].dim)
                for i in range(len(self.param.top))]

    def forward(self) -> tuple[Tensor, ...]:
        raise self.error("an Input layer has no forward: the Net feeds its tops "
                         "(net.forward(data=...) or net.blobs[name].data)")


@register("DummyData")
class DummyData(_DataLayer):
    """Tops filled by ``data_filler`` (one for all tops, or one per top; default
    constant 0). Constant tops are filled once, random ones at every forward."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.dummy_data_param
        n_tops = len(self.param.top)
        legacy = [p.num, p.channels, p.height, p.width]
        if len(p.shape) and any(len(f) for f in legacy):
            raise self.error("give shape, or the legacy num/channels/height/width; not both")
        if len(p.shape):
            if len(p.shape) not in (1, n_tops):
                raise self.error(f"shape is given {len(p.shape)} times for {n_tops} tops")
            self.shapes = [tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim)
                           for i in range(n_tops)]
        else:
            for field in legacy:
                if len(field) not in (1, n_tops):
                    raise self.error("num, channels, height and width must each be given "
                                     f"once, or once per top ({n_tops})")
            self.shapes = [tuple(int(f[0 if len(f) == 1 else i]) for f in legacy)
                           for i in range(n_tops)]
        if len(p.data_filler) not in (0, 1, n_tops):
            raise self.error(f"data_filler is given {len(p.data_filler)} times for {n_tops} "
                             "tops; give it once, or once per top")
        fillers = list(p.data_filler) or [None]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n_tops)]
        self.fixed = [None if f is not None and f.type != "constant" else
                      self._fill(f, shape) for f, shape in zip(self.fillers, self.shapes)]

    def _fill(self, filler, shape: Shape) -> Tensor:
        if filler is None:
            return torch.zeros(shape)
        return fill(filler, shape, self.error)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self.shapes)

    def forward(self) -> tuple[Tensor, ...]:
        return tuple(self._like_net(fixed if fixed is not None else self._fill(f, shape))
                     for fixed, f, shape in zip(self.fixed, self.fillers, self.shapes))


@register("HDF5Data")
class HDF5Data(_DataLayer):
    """Caffe's HDF5DataLayer.

    ``source`` is a text file listing .h5 files (whitespace separated); each
    file holds one dataset per top, named like the top, rows on axis 0. Each
    forward copies ``batch_size`` rows, moving to the next file at the end of
    one and wrapping around after the last. With ``shuffle`` the file order is
    permuted at start and at every wrap, and the rows of a file each time it is
    loaded or its end is reached (torch's RNG stands in for Caffe's).

    Data-parallel training: after ``set_shard(r, n)`` a TRAIN layer keeps rows
    r, r + n, r + 2n, ... of the stream (Caffe's ``HDF5DataLayer::Skip``), so
    the n ranks together read the n * batch_size rows one process would. Each
    forward ends at the start of the next global batch, so every rank's
    position is the same and a snapshot of rank 0's position resumes them all.
    """

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.hdf5_data_param
        self.check_source_and_batch("hdf5_data_param")
        self.batch_size, self.shuffle = p.batch_size, p.shuffle
        self.shard_rank, self.shard_count = 0, 1
        self.list_path = find_input(p.source, self.ctx.base_dir, "HDF5 source list",
                                    self.name)
        try:
            names = self.list_path.read_text().split()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read the HDF5 source list ({err})", file=self.list_path,
                               layer=self.name) from None
        if not names:
            raise DatasetError("the HDF5 source list names no .h5 file", file=self.list_path,
                               layer=self.name)
        self.files = [find_input(n, self.list_path.parent, "HDF5 file", self.name) for n in names]
        self.file_order = self._permutation(len(self.files))
        self.reset()
        self.row_shapes = [tuple(d.shape[1:]) for d in self.datasets]

    def _permutation(self, n: int) -> Tensor:
        return torch.randperm(n) if self.shuffle else torch.arange(n)

    def reset(self) -> None:
        """Start again at the first row of the first file (Caffe's restored solvers do)."""
        self.current_file, self.current_row, self.offset = 0, 0, 0
        self._load(self.files[int(self.file_order[0])])

    def _load(self, path: Path) -> None:
        self.datasets = self._read(path)
        self.row_order = self._permutation(self.datasets[0].shape[0])

    def _read(self, path: Path) -> list[Tensor]:
        try:
            with h5py.File(path, "r") as h5:
                datasets = []
                for name in self.param.top:
                    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
                        raise DatasetError(f"no dataset '{name}' (one dataset per top is "
                                           f"needed: {list(self.param.top)}); the file has "
                                           f"{sorted(h5.keys())}", file=path, layer=self.name)
                    datasets.append(torch.from_numpy(np.asarray(h5[name], dtype=np.float32)))
        except OSError as err:
            raise DatasetError(f"cannot read HDF5 file ({err})", file=path,
                               layer=self.name) from None
        rows = datasets[0].shape[0] if datasets[0].dim() else 0
        for name, data in zip(self.param.top, datasets):
            if data.dim() == 0 or data.shape[0] != rows:
                raise DatasetError(f"dataset '{name}' has shape {tuple(data.shape)}; every "
                                   f"dataset must have the same number of rows ({rows})",
                                   file=path, layer=self.name)
            if hasattr(self, "row_shapes"):
                expected = self.row_shapes[list(self.param.top).index(name)]
                if tuple(data.shape[1:]) != expected:
                    raise DatasetError(f"dataset '{name}' rows have shape "
                                       f"{tuple(data.shape[1:])}; earlier files had {expected}",
                                       file=path, layer=self.name)
        if rows == 0:
            raise DatasetError("the datasets have no rows", file=path, layer=self.name)
        return datasets

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size,) + shape for shape in self.row_shapes]

    def set_shard(self, rank: int, count: int) -> None:
        """Read rank ``rank``'s share of ``count`` data-parallel ranks. TEST layers keep
        every row: in Caffe only the root solver tests."""
        if not 0 <= rank < count:
            raise self.error(f"shard rank {rank} is not in [0, {count})")
        if self.phase != TEST:
            self.shard_rank, self.shard_count = rank, count

    def _skip(self) -> bool:
        return self.offset % self.shard_count != self.shard_rank

    def state_dict_position(self) -> dict:
        """Where the stream stands (JSON data): resuming here reads the same rows."""
        return {"file_order": self.file_order.tolist(), "current_file": self.current_file,
                "row_order": self.row_order.tolist(), "current_row": self.current_row,
                "offset": self.offset}

    def load_state_dict_position(self, position: dict) -> None:
        """Continue from a position ``state_dict_position`` returned (same source list)."""
        file_order, row_order = position["file_order"], position["row_order"]
        current_file, current_row = position["current_file"], position["current_row"]
        if sorted(file_order) != list(range(len(self.files))) or \
                not 0 <= current_file < len(self.files):
            raise DatasetError(f"the saved position is for a list of {len(file_order)} files; "
                               f"this list names {len(self.files)}", file=self.list_path,
                               layer=self.name)
        path = self.files[int(file_order[current_file])]
        datasets = self._read(path)
        rows = datasets[0].shape[0]
        if sorted(row_order) != list(range(rows)) or not 0 <= current_row < rows:
            raise DatasetError(f"the saved position is for a file of {len(row_order)} rows; "
                               f"this one has {rows}", file=path, layer=self.name)
        self.datasets = datasets
        self.file_order = torch.tensor(file_order, dtype=torch.int64)
        self.row_order = torch.tensor(row_order, dtype=torch.int64)
        self.current_file, self.current_row = current_file, current_row
        self.offset = int(position["offset"])

    def _next(self) -> None:
        self.current_row += 1
        if self.current_row == self.datasets[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.file_order = self._permutation(len(self.files))
                self._load(self.files[int(self.file_order[self.current_file])])
            self.current_row = 0
            if self.shuffle:
                self.row_order = self._permutation(self.datasets[0].shape[0])
        self.offset += 1

    def forward(self) -> tuple[Tensor, ...]:
        rows: list[list[Tensor]] = [[] for _ in self.param.top]
        for _ in range(self.batch_size):
            while self._skip():
                self._next()
            row = int(self.row_order[self.current_row])
            for j, data in enumerate(self.datasets):
                rows[j].append(data[row])
            self._next()
        while self.offset % self.shard_count:     # past the other ranks' rows
            self._next()
        return tuple(self._like_net(torch.stack(r)) for r in rows)
