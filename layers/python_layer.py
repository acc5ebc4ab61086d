"""The ``Python`` layer: runs a pycaffe-style layer class (opt-in only).

A pycaffe layer is a class with ``setup(bottom, top)``, ``reshape(bottom, top)``,
``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``, where each
blob has numpy ``.data``/``.diff`` arrays and ``.reshape(*shape)``. It is built
as Caffe builds it: ``cls(layer_param)``, then ``param_str`` and ``phase`` are
set and ``setup`` runs. Its backward becomes the autograd backward through a
small Function. ``PythonLayerBase`` is pycaffe's ``caffe.Layer`` (exported as
``fcnwild.caffe.Layer``); classes that do not derive from it work as well, without
learnable blobs.

Learnable blobs: ``self.blobs.add_blob(*shape)`` in ``setup`` appends a zero-filled
param to this layer's ``blobs``, which the net learns, saves and loads like any
layer's. ``self.blobs[i].data`` is that param and ``.diff`` its ``.grad``: the user's
backward writes the diff there itself, as in Caffe (the Function hands autograd no
gradient for the params, so nothing is added twice), and the solver updates from it.

Errors raised by the user's code reach the caller as they were raised, with a note
naming the layer and the method (as pycaffe lets them through).
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
from fcnwild.layers.blob_views import BlobVec, BlobView, LayerParam, blob_shape, \
    flush_host_copies
from fcnwild.layers.registry import register


class PyBlob(BlobView):
    """A top or bottom as a Python layer sees it: its own CPU arrays, copied from and to
    the net's blob around each call."""

    __slots__ = ("_data", "_diff")

    def __init__(self, shape: Sequence[int] = ()) -> None:
        self._data = torch.zeros(tuple(shape))
        self._diff = torch.zeros(tuple(shape))

    @property
    def data(self) -> np.ndarray:
        return self._data.numpy()

    @property
    def diff(self) -> np.ndarray:
        return self._diff.numpy()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    def reshape(self, *shape: int) -> None:
        shape = blob_shape(shape)
        if shape != self.shape:
            self._data = torch.zeros(shape)
            self._diff = torch.zeros(shape)


class PythonLayerBase:
    """pycaffe's ``caffe.Layer``: the base class of Python layers.

    Subclasses define ``setup``, ``reshape``, ``forward`` and, when the net
    back-propagates through them, ``backward``; ``param_str`` and ``phase`` are set
    before ``setup`` runs, and ``blobs`` holds the learnable blobs ``setup`` adds.
    """

    def __init__(self, param=None) -> None:
        self.param = param

    @property
    def type(self) -> str:
        return "Python"

    @property
    def blobs(self) -> BlobVec:
        if "_blobs" not in self.__dict__:
            self._blobs = BlobVec(refusal="BlobVec.add_blob on a Python layer that no net "
                                          "built: learnable blobs belong to a net's layer")
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


def _copy_in(blob: PyBlob, data: np.ndarray) -> None:
    blob.reshape(*data.shape)
    blob.data[...] = data


class _PythonFunction(torch.autograd.Function):
    """The user's forward and backward; inputs are the bottoms, then the layer's params
    (so that backward runs when only the params learn)."""

    @staticmethod
    def forward(ctx, layer: "Python", *inputs: Tensor):
        bottoms = inputs[:len(layer.bottom_blobs)]
        ctx.layer = layer
        ctx.bottom_data = [b.detach().cpu().numpy().astype(np.float32, copy=True)
                           for b in bottoms]
        ctx.devices = [(b.device, b.dtype) for b in bottoms]
        ctx.n_params = len(inputs) - len(bottoms)
        for blob, data in zip(layer.bottom_blobs, ctx.bottom_data):
            _copy_in(blob, data)
        layer.call("reshape", layer.bottom_blobs, layer.top_blobs)
        layer.call("forward", layer.bottom_blobs, layer.top_blobs)
        ctx.top_data = [np.array(t.data, dtype=np.float32) for t in layer.top_blobs]
        device, dtype = ctx.devices[0] if ctx.devices else layer.home()
        return tuple(torch.from_numpy(t.copy()).to(device=device, dtype=dtype)
                     for t in ctx.top_data)

    @staticmethod
    def backward(ctx, *top_grads: Tensor):
        layer = ctx.layer
        # Restore the blobs as they were at this forward: a later forward may have run.
        for blob, data in zip(layer.bottom_blobs, ctx.bottom_data):
            _copy_in(blob, data)
            blob.diff[...] = 0
        for blob, data, grad in zip(layer.top_blobs, ctx.top_data, top_grads):
            _copy_in(blob, data)
            blob.diff[...] = 0 if grad is None else grad.detach().cpu().numpy()
        propagate = list(ctx.needs_input_grad[1:1 + len(ctx.bottom_data)])
        layer.call("backward", layer.top_blobs, propagate, layer.bottom_blobs)
        grads = [torch.from_numpy(np.array(b.diff, dtype=np.float32)).to(device=d, dtype=t)
                 if need else None
                 for b, (d, t), need in zip(layer.bottom_blobs, ctx.devices, propagate)]
        # The params' diffs are what the user's backward wrote into them.
        return (None, *grads, *[None] * ctx.n_params)


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
        # Follows the net across devices and dtypes: where tops go when no bottom says.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        # True while the user's setup runs: the only time it may add or reshape params.
        self.configuring_blobs = False
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
        if isinstance(layer, PythonLayerBase):
            layer._blobs = BlobVec(adder=self._add_blob)
        return layer

    def _add_blob(self, shape: tuple[int, ...]) -> LayerParam:
        if not self.configuring_blobs:
            raise NotImplementedError(
                f"add_blob in Python layer '{self.name}' outside its setup(): the net "
                "registers a layer's learnable blobs when it is built")
        self.add_blob(torch.zeros(shape))
        return LayerParam(self, len(self.blobs) - 1)

    def home(self) -> tuple[torch.device, torch.dtype]:
        """The device and dtype of the net this layer belongs to."""
        return self._anchor.device, self._anchor.dtype

    def call(self, method: str, *args) -> None:
        """Run the user's ``method``; what it wrote into host copies of device tensors
        goes back to them before the net goes on."""
        try:
            getattr(self.py_layer, method)(*args)
        except Exception as err:  # the user's own exception, kept as raised
            p = self.param.python_param
            where = f" of {self.ctx.source}" if self.ctx.source else ""
            err.add_note(f"raised by {method}() of Python layer '{self.name}' "
                         f"({p.module}.{p.layer}){where}")
            raise
        finally:
            flush_host_copies()

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        for blob, shape in zip(self.bottom_blobs, bottom_shapes):
            blob.reshape(*shape)
        self.configuring_blobs = True
        try:
            self.call("setup", self.bottom_blobs, self.top_blobs)
        finally:
            self.configuring_blobs = False

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        for blob, shape in zip(self.bottom_blobs, bottom_shapes):
            blob.reshape(*shape)
        self.call("reshape", self.bottom_blobs, self.top_blobs)
        return [tuple(blob.shape) for blob in self.top_blobs]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:
        inputs = (*bottoms, *self.blobs)
        if not self.top_blobs:      # e.g. a layer that only logs: nothing to differentiate
            _PythonFunction.forward(_NoContext(), self, *inputs)
            return ()
        return tuple(_PythonFunction.apply(self, *inputs))


class _NoContext:
    """Stands in for autograd's ctx when a top-less Python layer runs forward only."""
