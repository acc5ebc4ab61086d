"""Data: Caffe's DataLayer, batches of Datum records from an LMDB or LevelDB store.

Tops: data (batch, C, H, W) and optionally label (batch,). Records are read in
key order and the cursor wraps from the last to the first. Each record goes
through the layer's DataTransformer (``transform_param``); encoded records are
decoded with OpenCV. A batch takes its image size from its first record, as
Caffe does; a later record of another size is an error. ``data_param.rand_skip``
is ignored, as in Caffe at this version, and so are the legacy ``scale``/
``mean_file``/``crop_size``/``mirror`` of ``data_param`` (a V1 net's are upgraded into
``transform_param``). Reading is synchronous; Caffe's ``prefetch`` queue is a
performance detail and has no effect on the batches.

Data-parallel training: after ``set_shard(r, n)`` a TRAIN layer keeps records r,
r + n, ... of the stream (Caffe's ``DataLayer::Skip``) and ends each forward at
the start of the next global batch, so every rank's position is the same.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError
from fcnwild.data.caffe_db import LEVELDB, LMDB, DatumStore
from fcnwild.data.caffe_io import parse_datum
from fcnwild.layers.base import TEST, Shape
from fcnwild.layers.data import _DataLayer, find_input
from fcnwild.layers.data_transformer import DataTransformer, in_layer, warn_legacy_fields
from fcnwild.layers.registry import register

_BACKENDS = {caffe_pb2.DataParameter.LMDB: LMDB, caffe_pb2.DataParameter.LEVELDB: LEVELDB}


@register("Data")
class Data(_DataLayer):
    num_tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.data_param
        if not p.source:
            raise self.error("data_param.source is not set")
        if p.batch_size == 0:
            raise self.error("data_param.batch_size must be > 0")
        self.batch_size = p.batch_size
        warn_legacy_fields(p, self.name)
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           layer=self.name, base_dir=self.ctx.base_dir,
                                           source=self.ctx.source)
        backend = _BACKENDS[p.backend]
        path = find_input(p.source, self.ctx.base_dir, f"{backend} store", self.name,
                          folder=True)
        with in_layer(self.name):
            self.store = DatumStore(path, backend)
            image = self._image()[0]
            self.top_shape = (self.batch_size,) + self.transformer.output_shape(
                image.shape, self.store.where())
        self.offset = 0
        self.shard_rank, self.shard_count = 0, 1

    def _image(self) -> tuple[np.ndarray, int]:
        """The record under the cursor: its (C, H, W) image and its label."""
        where = self.store.where()
        with in_layer(self.name):
            datum = parse_datum(self.store.value, where)
            return self.transformer.decode(datum, where), datum.label

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self.top_shape, (self.batch_size,)][:len(self.param.top)]

    def set_shard(self, rank: int, count: int) -> None:
        """Read rank ``rank``'s share of ``count`` data-parallel ranks (TEST layers read
        every record: in Caffe only the root solver tests)."""
        if not 0 <= rank < count:
            raise self.error(f"shard rank {rank} is not in [0, {count})")
        if self.phase != TEST:
            self.shard_rank, self.shard_count = rank, count

    def _next(self) -> None:
        self.store.next()
        self.offset += 1

    def forward(self) -> tuple[Tensor, ...]:
        images, labels = [], np.empty(self.batch_size, np.float32)
        first_shape = None
        for item in range(self.batch_size):
            while self.offset % self.shard_count != self.shard_rank:
                self._next()
            image, labels[item] = self._image()
            where = self.store.where()
            first_shape = first_shape or image.shape
            if image.shape != first_shape:
                raise DatasetError(f"record of shape {image.shape} (C, H, W) in a batch whose "
                                   f"first record is {first_shape}; a batch needs records of "
                                   "one size", file=where, layer=self.name)
            images.append(self.transformer(image, where))
            self._next()
        while self.offset % self.shard_count:      # past the other ranks' records
            self._next()
        tops = [self._like_net(torch.from_numpy(np.stack(images)))]
        if len(self.param.top) == 2:
            tops.append(self._like_net(torch.from_numpy(labels)))
        return tuple(tops)

    # --- resumable position (used by the Solver's snapshots) ---------------------------
    def state_dict_position(self) -> dict:
        return {"key": self.store.key.hex(), "offset": self.offset}

    def load_state_dict_position(self, position: dict) -> None:
        key = bytes.fromhex(position["key"])
        if not self.store.seek(key):
            raise DatasetError(f"the saved position is record {key!r}, which this store "
                               "does not hold", file=self.store.path, layer=self.name)
        self.offset = int(position["offset"])
