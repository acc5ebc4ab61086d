"""pycaffe's Blob interface (``data``, ``diff``, ``shape``, ``count``, ``num`` ...
``width``, ``reshape``) over torch tensors, shared by Python layers and ``fcnwild.caffe``.

``data``/``diff`` are numpy arrays of the very tensors a net computes with: views of
CPU tensors; on other devices host copies, written back to their tensors by
``flush_host_copies`` (before a net next computes, and after each call into a Python
layer's own code), which is when Caffe moves a blob's head back to the GPU.

A layer's learnable blobs (``LayerParam``) are looked up in the layer at each access,
so a view taken before the net shared or replaced a param shows the param it uses now.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

# id(device tensor) -> (tensor, host copy handed out since the last flush)
_host_copies: dict[int, tuple[Tensor, np.ndarray]] = {}
# Devices whose tensors numpy can view in place.
_VIEWABLE = {"cpu"}


def viewable(tensor: Tensor) -> bool:
    """Whether numpy can view ``tensor``'s memory in place (a CPU tensor)."""
    return tensor.device.type in _VIEWABLE


def host_array(tensor: Tensor) -> np.ndarray:
    """A numpy array of ``tensor`` whose writes reach it: a view on the CPU, a host copy
    written back at the next ``flush_host_copies`` on other devices."""
    if viewable(tensor):
        return tensor.detach().numpy()
    entry = _host_copies.get(id(tensor))
    if entry is not None and entry[0] is tensor:
        return entry[1]
    array = tensor.detach().to("cpu", copy=True).numpy()
    _host_copies[id(tensor)] = (tensor, array)
    return array


def flush_host_copies() -> None:
    """Write every host copy handed out back to its tensor; later reads make fresh copies."""
    if not _host_copies:
        return
    with torch.no_grad():
        for tensor, array in _host_copies.values():
            tensor.detach().copy_(torch.from_numpy(array))
    _host_copies.clear()


def param_diff(param: Tensor) -> Tensor:
    """A param's diff (its ``.grad``), zeros when no backward has written one yet."""
    if param.grad is None:
        param.grad = torch.zeros_like(param.detach())
    return param.grad


class BlobView:
    """pycaffe's Blob: subclasses say which tensors hold its data and diff, and its shape."""

    __slots__ = ()

    def _data_tensor(self) -> Tensor:
        raise NotImplementedError

    def _diff_tensor(self) -> Tensor:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, *shape: int) -> None:
        raise NotImplementedError

    @property
    def data(self) -> np.ndarray:
        return host_array(self._data_tensor())

    @property
    def diff(self) -> np.ndarray:
        return host_array(self._diff_tensor())

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

    def __repr__(self) -> str:
        return f"<caffe Blob shape={self.shape}>"


def blob_shape(shape: tuple) -> tuple[int, ...]:
    """pycaffe's ``reshape(*dims)``; a single list or tuple of dims is accepted too."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(d) for d in shape)


class LayerParam(BlobView):
    """Learnable blob ``index`` of ``layer`` (a torch module with a ``blobs`` list of
    Parameters): its data is the param tensor, its diff the param's ``.grad``, which the
    solver updates from."""

    __slots__ = ("_layer", "_index")

    def __init__(self, layer: nn.Module, index: int) -> None:
        self._layer, self._index = layer, index

    def _param(self) -> nn.Parameter:
        return self._layer.blobs[self._index]

    def _data_tensor(self) -> Tensor:
        return self._param()

    def _diff_tensor(self) -> Tensor:
        return param_diff(self._param())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._param().shape)

    def reshape(self, *shape: int) -> None:
        """A Python layer may give its own blobs a shape in ``setup``; afterwards the net
        has registered them with its solver and they keep their shape."""
        if not getattr(self._layer, "configuring_blobs", False):
            raise NotImplementedError(
                f"reshape of learnable blob {self._index} of layer '{self._layer.name}' "
                "outside its Python layer's setup(): fcnwild's params keep the shape they "
                "had when the net was built")
        shape = blob_shape(shape)
        if shape != self.shape:
            self._layer.blobs[self._index] = nn.Parameter(torch.zeros(shape))


class BlobVec(list):
    """pycaffe's BlobVec: the list of a layer's learnable blobs. ``add_blob(*shape)``
    appends a zero-filled learnable blob through ``adder`` (a Python layer's, during its
    setup); without one it names what is not supported."""

    def __init__(self, blobs: Iterable[BlobView] = (),
                 adder: Callable[[tuple[int, ...]], BlobView] | None = None,
                 refusal: str = "BlobVec.add_blob outside a net's Python layer") -> None:
        super().__init__(blobs)
        self._adder, self._refusal = adder, refusal

    def add_blob(self, *shape: int) -> None:
        if self._adder is None:
            raise NotImplementedError(self._refusal)
        self.append(self._adder(blob_shape(shape)))
