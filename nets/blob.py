"""pycaffe-style views of the Net's tensors: ``net.blobs[name]`` and ``net.params[layer][i]``.

``.data`` and ``.diff`` are numpy views of CPU tensors (writes go straight into
the net, as in pycaffe); on other devices they are copies, and assignment
(``blob.data = array``) copies back. ``.tensor``/``.grad`` give the torch
tensors themselves.

Each forward gives a blob a new top tensor. A *pinned* blob instead keeps its
buffers and copies new values into them while the shape stays the same, so
numpy views handed out earlier (pycaffe's ``fcnwild.caffe``) see every later
forward and backward, as pycaffe's views of Caffe's blob memory do.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _numpy_view(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()      # numpy has no bfloat16: a float32 copy (bf16 nets)
    return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _fits(buffer: Tensor | None, value: Tensor) -> bool:
    """Whether ``value`` can be copied into ``buffer`` (a distinct tensor of its layout)."""
    return buffer is not None and buffer.data_ptr() != value.data_ptr() \
        and buffer.shape == value.shape and buffer.dtype == value.dtype \
        and buffer.device == value.device


class Blob:
    """A named blob of the net: data, diff and shape."""

    def __init__(self, name: str, shape: tuple[int, ...], device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self._shape = tuple(shape)
        self._device = device or torch.device("cpu")
        self._dtype = dtype
        self._data: Tensor | None = None
        self._diff: Tensor | None = None
        self.pinned = False

    # --- data ------------------------------------------------------------------------
    @property
    def tensor(self) -> Tensor:
        if self._data is None:
            self._data = torch.zeros(self._shape, device=self._device, dtype=self._dtype)
        return self._data

    @tensor.setter
    def tensor(self, value: Tensor) -> None:
        if self.pinned and _fits(self._data, value):
            with torch.no_grad():
                self._data.copy_(value)
        else:
            self._data = value
        self._shape = tuple(value.shape)

    @property
    def data(self) -> np.ndarray:
        return _numpy_view(self.tensor)

    @data.setter
    def data(self, value: np.ndarray | Tensor) -> None:
        self.tensor.detach().copy_(torch.as_tensor(value).reshape(self._shape))

    # --- diff ------------------------------------------------------------------------
    @property
    def grad(self) -> Tensor:
        if self._diff is None or tuple(self._diff.shape) != self._shape:
            self._diff = torch.zeros(self._shape, device=self._device, dtype=self._dtype)
        return self._diff

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if self.pinned and self._diff is not None and \
                (value is None or _fits(self._diff, value)):
            with torch.no_grad():
                if value is None:
                    self._diff.zero_()
                else:
                    self._diff.copy_(value)
        else:
            self._diff = value

    @property
    def diff(self) -> np.ndarray:
        return _numpy_view(self.grad)

    @diff.setter
    def diff(self, value: np.ndarray | Tensor) -> None:
        self.grad.copy_(torch.as_tensor(value).reshape(self._shape))

    def release_data(self) -> Tensor | None:
        """Let go of the data tensor (a layer is about to replace it); returns it. A
        pinned blob keeps its buffer (views of it are out there) and returns None."""
        if self.pinned:
            return None
        data, self._data = self._data, None
        return data

    def release_diff(self) -> Tensor | None:
        """Let go of the diff tensor (a backward pass is about to replace it); returns it,
        or None for a pinned blob, which keeps it."""
        if self.pinned:
            return None
        diff, self._diff = self._diff, None
        return diff

    # --- shape -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape (pycaffe); call ``net.reshape()`` afterwards."""
        shape = tuple(int(s) for s in (shape[0] if len(shape) == 1 and
                                       isinstance(shape[0], (tuple, list)) else shape))
        if shape != self._shape:
            self._shape = shape
            self._data = None
            self._diff = None

    @property
    def count(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        return self._shape[axis] if len(self._shape) > axis else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self._shape})"


class ParamBlob:
    """One learnable blob of a layer (pycaffe's ``net.params[layer][i]``)."""

    def __init__(self, param: torch.nn.Parameter) -> None:
        self.tensor = param

    @property
    def data(self) -> np.ndarray:
        return _numpy_view(self.tensor)

    @data.setter
    def data(self, value: np.ndarray | Tensor) -> None:
        with torch.no_grad():
            self.tensor.copy_(torch.as_tensor(value).reshape(self.tensor.shape))

    @property
    def grad(self) -> Tensor:
        if self.tensor.grad is None:
            self.tensor.grad = torch.zeros_like(self.tensor)
        return self.tensor.grad

    @property
    def diff(self) -> np.ndarray:
        return _numpy_view(self.grad)

    @diff.setter
    def diff(self, value: np.ndarray | Tensor) -> None:
        self.grad.copy_(torch.as_tensor(value).reshape(self.tensor.shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def count(self) -> int:
        return self.tensor.numel()

    def __repr__(self) -> str:
        return f"ParamBlob(shape={self.shape})"
