"""pycaffe's Blob for a net's blobs: ``data`` and ``diff`` are numpy arrays of the memory
the net computes with.

On the CPU they are views: ``blob.data[...] = x`` and ``blob.data.flat = ...``
change what the next forward reads, with no call to sync, and an array read
once keeps showing the blob's values after later forwards while the blob's
shape stays the same (the first read pins the blob's buffers, see
``fcnwild.nets.blob``). Arrays keep their memory alive after the Net is gone.
On a CUDA device they are host copies written back before the net next runs
(``fcnwild.layers.blob_views``). A layer's learnable blobs are
``fcnwild.layers.blob_views.LayerParam``; ``caffe.Blob`` is the interface of both.
"""
from __future__ import annotations

from torch import Tensor

from fcnwild.layers.blob_views import BlobView, viewable
from fcnwild.nets.blob import Blob as NetBlob


class NetBlobView(BlobView):
    """One blob of a net: ``data``, ``diff``, ``shape``, ``count``, ``num`` ... ``width``,
    ``reshape(*dims)``."""

    __slots__ = ("_blob",)

    def __init__(self, blob: NetBlob) -> None:
        self._blob = blob

    def _pinned(self, tensor: Tensor) -> Tensor:
        if viewable(tensor):
            self._blob.pinned = True
        return tensor

    def _data_tensor(self) -> Tensor:
        return self._pinned(self._blob.tensor)

    def _diff_tensor(self) -> Tensor:
        return self._pinned(self._blob.grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._blob.shape)

    def reshape(self, *shape: int, **kwargs) -> None:
        """Give the blob a new shape (call ``net.reshape()`` to carry it through the net)."""
        if kwargs:
            raise TypeError("Blob.reshape takes no kwargs")
        self._blob.reshape(*(int(d) for d in shape))
