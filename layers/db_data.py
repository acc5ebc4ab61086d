"""Data: Caffe's DataLayer, batches of Datum records from an LMDB or LevelDB store.

Tops: data (batch, C, H, W) and optionally label (batch,). Records are read in
key order and the cursor wraps from the last to the first. Each record goes
through the layer's DataTransformer (``transform_param``); encoded records are
decoded with OpenCV. A batch takes its image size from its first record, as
Caffe does; a later record of another size is an error. ``data_param.rand_skip``
is ignored, as in Caffe at this version, and so are ``force_encoded_color`` (see
``transform_param.force_color``) and the legacy ``scale``/``mean_file``/``crop_size``/
``mirror`` of ``data_param`` (a V1 net's are upgraded into ``transform_param``).

Prefetching (``data_param.prefetch`` batches, Caffe's default 4; 0 reads in the
forward): a background thread reads, decodes and prepares (mean, scale) the records
of the next batches. That part draws no random numbers; the crops and flips, which
do, are drawn in the forward in batch order, so the batches are the same with or
without prefetching.

Data-parallel training: after ``set_shard(r, n)`` a TRAIN layer keeps records r,
r + n, ... of the stream (Caffe's ``DataLayer::Skip``) and ends each batch at
the start of the next global batch, so every rank's position is the same.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError
from fcnwild.data.caffe_db import LEVELDB, LMDB, DatumStore
from fcnwild.data.caffe_io import parse_datum
from fcnwild.layers.base import TEST, Shape, find_input
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.data_transformer import (
    DataTransformer,
    in_layer,
    warn_legacy_fields,
)
from fcnwild.layers.registry import register

_BACKENDS = {caffe_pb2.DataParameter.LMDB: LMDB, caffe_pb2.DataParameter.LEVELDB: LEVELDB}
# One batch as read: prepared (C, H, W) images (DataTransformer.prepare), labels, and
# the position after the batch (key, offset).
_Batch = tuple[list[np.ndarray], np.ndarray, tuple[bytes, int]]


class _Walk:
    """The cursor's walk through the store: one data-parallel rank's share of the records
    in key order, wrapping around."""

    def __init__(self, store: DatumStore, prepare: Callable, batch_size: int, layer: str) -> None:
        self.store, self.prepare = store, prepare
        self.batch_size, self.layer = batch_size, layer
        self.offset = 0
        self.rank, self.count = 0, 1

    def position(self) -> tuple[bytes, int]:
        return self.store.key, self.offset

    def seek(self, key: bytes, offset: int) -> bool:
        if not self.store.seek(key):
            return False
        self.offset = offset
        return True

    def record(self) -> tuple[np.ndarray, int, str]:
        """The record under the cursor: its prepared image, its label and its name."""
        where = self.store.where()
        with in_layer(self.layer):
            datum = parse_datum(self.store.value, where)
            return self.prepare(datum, where), datum.label, where

    def _next(self) -> None:
        self.store.next()
        self.offset += 1

    def batch(self) -> _Batch:
        images, labels = [], np.empty(self.batch_size, np.float32)
        for item in range(self.batch_size):
            while self.offset % self.count != self.rank:
                self._next()
            image, labels[item], where = self.record()
            if images and image.shape != images[0].shape:
                raise DatasetError(f"record of shape {image.shape} (C, H, W) in a batch whose "
                                   f"first record is {images[0].shape}; a batch needs records "
                                   "of one size", file=where, layer=self.layer)
            images.append(image)
            self._next()
        while self.offset % self.count:      # past the other ranks' records
            self._next()
        return images, labels, self.position()


class _Prefetch:
    """Runs ``read`` on a background thread, up to ``depth`` results ahead; an error
    is raised by the ``get`` that reaches it (and every later one)."""

    _live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, read: Callable[[], _Batch], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True,
                                        name="fcnwild-data-prefetch")
        self._live.add(self)
        self._thread.start()

    def _run(self, read: Callable[[], _Batch]) -> None:
        while not self._stop.is_set():
            try:
                item: _Batch | BaseException = read()
            except BaseException as err:      # noqa: BLE001  (handed to the forward)
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self) -> _Batch:
        if self._error is None:
            item = self._queue.get()
            if not isinstance(item, BaseException):
                return item
            self._error = item
        raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    @classmethod
    def close_all(cls) -> None:
        for prefetch in list(cls._live):
            prefetch.close()


# Daemon threads must not be inside a database call while the interpreter shuts down.
atexit.register(_Prefetch.close_all)


@register("Data")
class Data(_DataLayer):
    num_tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.data_param
        self.check_source_and_batch("data_param")
        self.batch_size, self.prefetch = p.batch_size, p.prefetch
        warn_legacy_fields(p, "data_param", self.name)
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           layer=self.name, base_dir=self.ctx.base_dir,
                                           source=self.ctx.source)
        backend = _BACKENDS[p.backend]
        path = find_input(p.source, self.ctx.base_dir, f"{backend} store", self.name,
                          folder=True)
        with in_layer(self.name):
            store = DatumStore(path, backend)
        self.walk = _Walk(store, self.transformer.prepare_datum, self.batch_size, self.name)
        image, _, where = self.walk.record()
        self.top_shape = (self.batch_size,) + self.transformer.output_shape(image.shape, where)
        self.position = self.walk.position()      # after the batches consumed so far
        self._reader: _Prefetch | None = None

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self.top_shape, (self.batch_size,)][:len(self.param.top)]

    def set_shard(self, rank: int, count: int) -> None:
        """Read rank ``rank``'s share of ``count`` data-parallel ranks (TEST layers read
        every record: in Caffe only the root solver tests)."""
        if not 0 <= rank < count:
            raise self.error(f"shard rank {rank} is not in [0, {count})")
        if self.phase != TEST:
            self._stop_prefetch()
            self.walk.rank, self.walk.count = rank, count

    def forward(self) -> tuple[Tensor, ...]:
        if not self.prefetch:
            batch = self.walk.batch()
        else:
            if self._reader is None:
                self._reader = _Prefetch(self.walk.batch, self.prefetch)
            batch = self._reader.get()
        images, labels, self.position = batch
        tops = [self._like_net(torch.from_numpy(self.transformer.batch(images)))]
        if len(self.param.top) == 2:
            tops.append(self._like_net(torch.from_numpy(labels)))
        return tuple(tops)

    def _stop_prefetch(self) -> None:
        """Stop reading ahead and put the cursor back after the batches consumed."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self.walk.seek(*self.position)

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()

    # --- resumable position (used by the Solver's snapshots) ---------------------------
    def state_dict_position(self) -> dict:
        key, offset = self.position
        return {"key": key.hex(), "offset": offset}

    def load_state_dict_position(self, position: dict) -> None:
        self._stop_prefetch()
        key, offset = bytes.fromhex(position["key"]), int(position["offset"])
        if not self.walk.seek(key, offset):
            raise DatasetError(f"the saved position is record {key!r}, which this store "
                               "does not hold", file=self.walk.store.path, layer=self.name)
        self.position = (key, offset)
