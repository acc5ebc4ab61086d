"""The ``Python`` layer: runs a pycaffe-style layer class (opt-in only).

A pycaffe layer is a class with ``setup(bottom, top)``, ``reshape(bottom, top)``,
``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``, where each
blob has numpy ``.data``/``.diff`` arrays and ``.reshape(*shape)``. It is built
as Caffe builds it: ``cls(layer_param)``, then ``param_str`` and ``phase`` are
set and ``setup`` runs. Its backward becomes the autograd backward through a
small Function. ``PythonLayerBase`` is pycaffe's ``caffe.Layer`` (exported as
``fcnwild.caffe.Layer``); classes that do not derive from it work as well.
Learnable blobs of Python layers (``self.blobs.add_blob``) are not supported.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.base import Layer, LayerContext, Shape
from fcnwild.layers.registry import register


class PyBlob:
    """The pycaffe Blob interface a Python layer sees."""

    def __init__(self, shape: Sequence[int] = ()) -> None:
        self.data = np.zeros(tuple(shape), dtype=np.float32)
        self.diff = np.zeros(tuple(shape), dtype=np.float32)

    def reshape(self, *shape: int) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if tuple(shape) != self.data.shape:
            self.data = np.zeros(tuple(int(d) for d in shape), dtype=np.float32)
            self.diff = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def count(self) -> int:
        return int(self.data.size)

    def _legacy(self, i: int) -> int:
        return self.data.shape[i] if i < self.data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class BlobVec(list):
    """pycaffe's BlobVec: the list of a layer's learnable blobs."""

    def add_blob(self, *shape: int) -> None:
        raise NotImplementedError("BlobVec.add_blob: fcnwild does not support learnable blobs "
                                  "added to a layer (learnable blobs of Python layers)")


class PythonLayerBase:
    """pycaffe's ``caffe.Layer``: the base class of Python layers.

    Subclasses define ``setup``, ``reshape``, ``forward`` and, when the net
    back-propagates through them, ``backward``; ``param_str`` and ``phase`` are set
    before ``setup`` runs.
    """

    def __init__(self, param=None) -> None:
        self.param = param

    @property
    def type(self) -> str:
        return "Python"

    @property
    def blobs(self) -> BlobVec:
        if "_blobs" not in self.__dict__:
            self._blobs = BlobVec()
        return self._blobs

    def setup(self, bottom, top) -> None:
        pass

    def reshape(self, bottom, top) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no "
                                  "reshape(bottom, top)")

    def forward(self, bottom, top) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no "
                                  "forward(bottom, top)")

    def backward(self, top, propagate_down, bottom) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no "
                                  "backward(top, propagate_down, bottom)")


class _PythonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer: "Python", *bottoms: Tensor):
        ctx.layer = layer
        ctx.bottom_data = [b.detach().cpu().numpy().astype(np.float32, copy=True) for b in bottoms]
        ctx.devices = [(b.device, b.dtype) for b in bottoms]
        for blob, data in zip(layer.bottom_blobs, ctx.bottom_data):
            blob.reshape(*data.shape)
            blob.data[...] = data
        layer.call("reshape", layer.bottom_blobs, layer.top_blobs)
        layer.call("forward", layer.bottom_blobs, layer.top_blobs)
        ctx.top_data = [np.array(t.data, dtype=np.float32) for t in layer.top_blobs]
        device, dtype = ctx.devices[0] if ctx.devices else (torch.device("cpu"), torch.float32)
        return tuple(torch.from_numpy(t.copy()).to(device=device, dtype=dtype)
                     for t in ctx.top_data)

    @staticmethod
    def backward(ctx, *top_grads: Tensor):
        layer = ctx.layer
        # Restore the blobs as they were at this forward: a later forward may have run.
        for blob, data in zip(layer.bottom_blobs, ctx.bottom_data):
            blob.reshape(*data.shape)
            blob.data[...] = data
            blob.diff[...] = 0
        for blob, data, grad in zip(layer.top_blobs, ctx.top_data, top_grads):
            blob.reshape(*data.shape)
            blob.data[...] = data
            blob.diff[...] = 0 if grad is None else grad.detach().cpu().numpy()
        propagate = list(ctx.needs_input_grad[1:])
        layer.call("backward", layer.top_blobs, propagate, layer.bottom_blobs)
        grads = [torch.from_numpy(np.array(b.diff, dtype=np.float32)).to(device=d, dtype=t)
                 if need else None
                 for b, (d, t), need in zip(layer.bottom_blobs, ctx.devices, propagate)]
        return (None, *grads)


@register("Python")
class Python(Layer):
    num_bottoms = (0, None)
    num_tops = (0, None)

    def __init__(self, param: caffe_pb2.LayerParameter,
                 ctx: LayerContext | None = None) -> None:
        super().__init__(param, ctx)
        p = param.python_param
        if not self.ctx.allow_python:
            raise self.error(f"Python layers execute arbitrary code (module '{p.module}', "
                             f"class '{p.layer}'); pass allow_python=True / --allow-python to "
                             "run this net")
        if not p.module or not p.layer:
            raise self.error("python_param needs both module and layer")
        self.py_layer = self._instantiate(p.module, p.layer)
        self.bottom_blobs = [PyBlob() for _ in param.bottom]
        self.top_blobs = [PyBlob() for _ in param.top]

    def _instantiate(self, module_name: str, class_name: str):
        # The prototxt's folder is searched first, where such modules usually live.
        added = self.ctx.base_dir is not None and str(self.ctx.base_dir) not in sys.path
        if added:
            sys.path.insert(0, str(self.ctx.base_dir))
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # the user's module: any import failure is theirs
            raise self.error(f"cannot import Python layer module '{module_name}': "
                             f"{type(err).__name__}: {err}") from err
        finally:
            if added:
                sys.path.remove(str(self.ctx.base_dir))
        cls = getattr(module, class_name, None)
        if cls is None:
            raise self.error(f"module '{module_name}' has no class '{class_name}'")
        layer = cls(self.param)
        layer.param_str = self.param.python_param.param_str
        layer.phase = self.phase
        return layer

    def call(self, method: str, *args) -> None:
        try:
            getattr(self.py_layer, method)(*args)
        except Exception as err:  # user code: report which layer and method failed
            raise self.error(f"Python layer {method}() failed: {type(err).__name__}: "
                             f"{err}") from err

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        for blob, shape in zip(self.bottom_blobs, bottom_shapes):
            blob.reshape(*shape)
        self.call("setup", self.bottom_blobs, self.top_blobs)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        for blob, shape in zip(self.bottom_blobs, bottom_shapes):
            blob.reshape(*shape)
        self.call("reshape", self.bottom_blobs, self.top_blobs)
        return [tuple(blob.shape) for blob in self.top_blobs]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:
        if not self.top_blobs:      # e.g. a layer that only logs: nothing to differentiate
            _PythonFunction.forward(_NoContext(), self, *bottoms)
            return ()
        return tuple(_PythonFunction.apply(self, *bottoms))


class _NoContext:
    """Stands in for autograd's ctx when a top-less Python layer runs forward only."""
