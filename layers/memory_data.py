"""MemoryData: Caffe's MemoryDataLayer, batches from arrays held in memory.

The arrays come from ``set_input_arrays(data, labels)`` (pycaffe's
``Net.set_input_arrays``) or ``reset(data, labels, n)``; as in Caffe they are
used in place, not copied (a change to the caller's array shows in later
batches), and ``transform_param`` is not applied to them. Each forward
returns the next ``batch_size`` items and wraps around after the last. The
label top is (batch,) after setup and (batch, 1, 1, 1) after a forward, as
in Caffe.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.layers.base import Shape
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.registry import register

log = logging.getLogger("fcnwild.layers")


@register("MemoryData")
class MemoryData(_DataLayer):
    num_tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.memory_data_param
        self.batch_size, self.channels = p.batch_size, p.channels
        self.height, self.width = p.height, p.width
        if min(self.batch_size, self.channels, self.height, self.width) == 0:
            raise self.error("memory_data_param needs batch_size, channels, height and width, "
                             "all > 0")
        self.data: Tensor | None = None
        self.labels: Tensor | None = None
        self.n = self.pos = 0

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed ``data`` (N, channels, height, width) and ``labels`` (N,) or (N, 1, 1, 1),
        both C-contiguous float32 with N a multiple of batch_size; checked as pycaffe's
        ``Net.set_input_arrays`` checks them. Reading starts again at item 0."""
        data, labels = np.asarray(data), np.asarray(labels)
        if labels.ndim == 1:          # pycaffe adds the three unit axes itself
            labels = np.ascontiguousarray(labels[:, None, None, None])
        for name, array, shape in (("data", data, (self.channels, self.height, self.width)),
                                   ("labels", labels, (1, 1, 1))):
            self._check_memory(name, array)
            if array.ndim != 4:
                raise self.error(f"the {name} array must be 4-d, got shape {array.shape}")
            if array.shape[1:] != shape:
                raise self.error(f"the {name} array has items of shape {array.shape[1:]}; "
                                 f"this layer takes {shape} (channels, height, width)")
        if data.shape[0] != labels.shape[0]:
            raise self.error(f"data ({data.shape[0]} items) and labels ({labels.shape[0]}) "
                             "must have the same first dimension")
        self.reset(data, labels, data.shape[0])

    def reset(self, data: np.ndarray, labels: np.ndarray, n: int) -> None:
        """Caffe's MemoryDataLayer::Reset: read the first ``n`` items of ``data`` and
        ``labels`` (float32 arrays), starting at item 0."""
        self._check_memory("data", data)
        self._check_memory("labels", labels)
        if n <= 0 or n % self.batch_size:
            raise self.error(f"the number of items ({n}) must be a positive multiple of "
                             f"batch_size ({self.batch_size})")
        size = self.channels * self.height * self.width
        if data.size < n * size or labels.size < n:
            raise self.error(f"reset with n = {n} needs {n} items; data holds "
                             f"{data.size // size}, labels {labels.size}")
        if self.param.HasField("transform_param"):
            log.warning("layer '%s': MemoryData does not transform arrays given to it "
                        "(transform_param is ignored)", self.name)
        self.data = torch.from_numpy(data).reshape(-1)[:n * size].view(
            n, self.channels, self.height, self.width)
        self.labels = torch.from_numpy(labels).reshape(-1)[:n].view(n, 1, 1, 1)
        self.n, self.pos = n, 0

    def _check_memory(self, name: str, array: np.ndarray) -> None:
        """The layer reads the caller's memory as it is: float32, C order."""
        if not array.flags.c_contiguous:
            raise self.error(f"the {name} array must be C contiguous")
        if array.dtype != np.float32:
            raise self.error(f"the {name} array must be float32, got {array.dtype}")

    def forward(self) -> tuple[Tensor, ...]:
        if self.data is None:
            raise self.error("MemoryData has no arrays: call net.set_input_arrays(data, labels) "
                             "(or the layer's reset) before forward")
        batch = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % self.n
        return self._like_net(self.data[batch]), self._like_net(self.labels[batch])

    # --- resumable position (used by the Solver's snapshots) ---------------------------
    def state_dict_position(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict_position(self, position: dict) -> None:
        """Continue at item ``pos`` of the arrays fed (the same arrays must be fed again)."""
        self.pos = int(position["pos"])
        if self.data is not None and not 0 <= self.pos < self.n:
            raise self.error(f"the saved position is item {self.pos}; the arrays fed hold "
                             f"{self.n}")
