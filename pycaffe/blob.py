"""pycaffe's Blob: ``data`` and ``diff`` are numpy arrays of the memory the net computes with.

On the CPU they are views: ``blob.data[...] = x`` and ``blob.data.flat = ...``
change what the next forward reads, with no call to sync, and an array read
once keeps showing the blob's values after later forwards while the blob's
shape stays the same (the first read pins the blob's buffers, see
``fcnwild.nets.blob``). Arrays keep their memory alive after the Net is gone.
On a CUDA device they are host copies written back before the net next runs
(``_caffe.flush_host_copies``).
"""
from __future__ import annotations

import numpy as np

from fcnwild.caffe import _caffe
from fcnwild.nets.blob import Blob as NetBlob
from fcnwild.nets.blob import ParamBlob
from fcnwild.nets.net import Net as FcnNet


class Blob:
    """One blob of a net: ``data``, ``diff``, ``shape``, ``count``, ``num`` ... ``width``,
    ``reshape(*dims)``."""

    __slots__ = ("_blob",)

    def __init__(self, blob: NetBlob) -> None:
        self._blob = blob

    def _source(self) -> NetBlob | ParamBlob:
        return self._blob

    def _pin(self, source) -> None:
        if _caffe.viewable(source.tensor):
            source.pinned = True

    @property
    def data(self) -> np.ndarray:
        source = self._source()
        self._pin(source)
        return _caffe.host_array(source.tensor)

    @property
    def diff(self) -> np.ndarray:
        source = self._source()
        self._pin(source)
        return _caffe.host_array(source.grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._source().shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        if len(shape) > 4:
            raise ValueError("Cannot use legacy accessors on Blobs with > 4 axes.")
        return shape[axis] if axis < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int, **kwargs) -> None:
        """Give the blob a new shape (call ``net.reshape()`` to carry it through the net)."""
        if kwargs:
            raise TypeError("Blob.reshape takes no kwargs")
        self._blob.reshape(*(int(d) for d in shape))

    def __repr__(self) -> str:
        return f"<caffe Blob shape={self.shape}>"


class ParamView(Blob):
    """A layer's learnable blob, looked up at each access so that a view taken before
    ``share_with`` shows the shared blob afterwards."""

    __slots__ = ("_net", "_layer", "_index")

    def __init__(self, net: FcnNet, layer: str, index: int) -> None:
        super().__init__(None)
        self._net, self._layer, self._index = net, layer, index

    def _source(self) -> ParamBlob:
        return self._net.params[self._layer][self._index]

    def _pin(self, source) -> None:
        """Params keep their tensors; nothing to pin."""

    def reshape(self, *shape: int, **kwargs) -> None:
        raise NotImplementedError("Blob.reshape on a learnable blob: fcnwild's params keep "
                                  "the shape their layer gave them")
