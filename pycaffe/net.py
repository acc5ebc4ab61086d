"""pycaffe's Net: ``caffe.Net(prototxt, phase, level=, stages=, weights=)`` translated onto
``fcnwild.nets.net.Net``.

Names, return values, checks and error messages are pycaffe's (``python/caffe/
pycaffe.py`` and ``_caffe.cpp``); the computing is fcnwild's Net. A solver's
nets are views onto the solver's own ``fcnwild`` nets (``Net._view``).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from itertools import zip_longest
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

from fcnwild.base.errors import FcnwildError, NetError, WeightsError
from fcnwild.caffe import _caffe
from fcnwild.caffe.blob import NetBlobView
from fcnwild.layers.blob_views import BlobVec, LayerParam, flush_host_copies
from fcnwild.nets.net import Net as FcnNet

log = logging.getLogger("fcnwild.caffe")
PathLike = str | os.PathLike
_NET_ARGUMENTS = ("phase", "level", "stages", "weights")


class Net:
    """A Caffe net with pycaffe's interface.

    ``Net(network_file, phase, level=0, stages=None, weights=None)`` or the legacy
    ``Net(network_file, weights, phase)``. Python layers load without an opt-in: a
    script that imports caffe already runs its author's code.
    """

    def __init__(self, network_file: PathLike, *args, **kwargs) -> None:
        phase, level, stages, weights = _net_arguments(network_file, args, kwargs)
        check_file(network_file, NetError)
        if weights is not None:
            check_file(weights, WeightsError)
        net = FcnNet(network_file, phase=phase, level=level, stages=tuple(stages or ()),
                     allow_python=True)
        if weights is not None:
            net.copy_from(weights)
        if _caffe.device().type != "cpu":
            net.to(_caffe.device())
        self._bind(net, owner=None)

    @classmethod
    def _view(cls, net: FcnNet, owner) -> "Net":
        """A pycaffe view onto an existing fcnwild Net (a solver's train or test net);
        ``owner`` moves it between devices."""
        view = cls.__new__(cls)
        view._bind(net, owner)
        return view

    def _bind(self, net: FcnNet, owner) -> None:
        self._net = net
        self._owner = owner
        self._generation = _caffe.generation()
        self._blob_names = list(net.blobs)
        self._blobs = [NetBlobView(blob) for blob in net.blobs.values()]
        self.blobs = OrderedDict(zip(self._blob_names, self._blobs))
        self._layer_names = list(net.layer_names)
        self.layers = [_layer_view(net, i) for i in range(len(net.layers))]
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        self.params = OrderedDict((name, self.layer_dict[name].blobs) for name in
                                  self._layer_names if name in net.params)
        index = {name: i for i, name in enumerate(self._blob_names)}
        self.inputs = list(net.inputs)
        # Caffe collects the output blobs in a std::set: they come sorted by name.
        self.outputs = sorted(net.outputs)
        self._inputs = [index[name] for name in self.inputs]
        self._outputs = [index[name] for name in self.outputs]
        self.top_names = OrderedDict(zip(self._layer_names, (list(t) for t in net.top_names)))
        self.bottom_names = OrderedDict(zip(self._layer_names,
                                            (list(b) for b in net.bottom_names)))
        self._blob_index = index
        self._callbacks: dict[str, list[Callable[[int], object]]] = {
            "before_forward": [], "after_forward": [], "before_backward": [],
            "after_backward": []}

    # ------------------------------------------------------------------ structure
    @property
    def blob_loss_weights(self) -> OrderedDict:
        """Blob name -> its loss weight (0 for blobs that are no loss)."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [self._net.loss_weights.get(name, 0.0) for name in self._blob_names]

    def _top_ids(self, i: int) -> list[int]:
        return [self._blob_index[name] for name in self._net.top_names[i]]

    def _bottom_ids(self, i: int) -> list[int]:
        return [self._blob_index[name] for name in self._net.bottom_names[i]]

    def __repr__(self) -> str:
        return f"<caffe Net {self._net.name!r}: {len(self.layers)} layers, inputs " \
               f"{self.inputs}, outputs {self.outputs}>"

    # ------------------------------------------------------------------ device
    def _prepare(self) -> None:
        """Before the net computes: host copies go back to the device, and the net
        follows a mode or device change (Caffe's mode is process-wide)."""
        flush_host_copies()
        if self._owner is not None:
            self._owner._prepare()
        elif self._generation != _caffe.generation():
            self._generation = _caffe.generation()
            self._net.to(_caffe.device())
            release_views(self._net)

    # ------------------------------------------------------------------ forward
    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Feed the input arrays (keyword = input blob name), run layers ``start`` ..
        ``end`` (inclusive) and return the output blobs plus ``blobs`` (views)."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise NetError(f"Input blob arguments do not match net inputs. (given "
                               f"{sorted(kwargs)}, the net's inputs are {self.inputs})",
                               file=self._net.source)
            for name, array in kwargs.items():
                if array.shape[0] != self.blobs[name].shape[0]:
                    raise NetError(f"Input is not batch sized ('{name}' has {array.shape[0]} "
                                   f"items, the net's batch is {self.blobs[name].shape[0]})",
                                   file=self._net.source)
                self.blobs[name].data[...] = array
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def _forward(self, start: int, end: int) -> float:
        """Run layers ``start`` .. ``end`` (indices); the loss they produced."""
        self._check_range(start, end)
        self._prepare()
        if not self._callbacks["before_forward"] and not self._callbacks["after_forward"]:
            return self._net.forward_range(start, end)
        loss = 0.0
        for i in range(start, end + 1):
            self._run_callbacks("before_forward", i)
            loss += self._net.forward_range(i, i)
            self._run_callbacks("after_forward", i)
        return loss

    # ------------------------------------------------------------------ backward
    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Set the output diffs (keyword = output blob name), back-propagate from layer
        ``start`` down to ``end`` and return the input diffs plus ``diffs`` (views)."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise NetError(f"Top diff arguments do not match net outputs. (given "
                               f"{sorted(kwargs)}, the net's outputs are {self.outputs})",
                               file=self._net.source)
            for name, diff in kwargs.items():
                if diff.shape[0] != self.blobs[name].shape[0]:
                    raise NetError(f"Diff is not batch sized ('{name}' has {diff.shape[0]} "
                                   f"items, the net's batch is {self.blobs[name].shape[0]})",
                                   file=self._net.source)
                self.blobs[name].diff[...] = diff
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def _backward(self, start: int, end: int) -> None:
        """Back-propagate through layers ``start`` down to ``end`` (indices)."""
        self._check_range(end, start)
        self._prepare()
        if not self._callbacks["before_backward"] and not self._callbacks["after_backward"]:
            self._net.backward_range(start, end)
            return
        for i in range(start, end - 1, -1):
            self._run_callbacks("before_backward", i)
            self._net.backward_layer(i)
            self._run_callbacks("after_backward", i)

    # ------------------------------------------------------------------ batches
    def forward_all(self, blobs: Iterable[str] | None = None, **kwargs: np.ndarray
                    ) -> dict[str, np.ndarray]:
        """Forward any number of items in batches of the net's batch size; the last
        batch is padded with zeros and the padding dropped from the outputs."""
        _need_inputs("forward_all", kwargs)
        blobs = list(blobs or [])
        all_outs: dict[str, list[np.ndarray]] = {out: [] for out in
                                                 set(self.outputs + blobs)}
        for batch in self._batch(kwargs):
            for out, array in self.forward(blobs=blobs, **batch).items():
                all_outs[out].append(array.copy())
        result = {out: np.concatenate(chunks) for out, chunks in all_outs.items()}
        return _drop_padding(result, kwargs)

    def forward_backward_all(self, blobs: Iterable[str] | None = None,
                             diffs: Iterable[str] | None = None, **kwargs: np.ndarray
                             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward in batches: keyword arrays named like inputs are fed,
        those named like outputs set the top diffs; returns (outputs, input diffs)."""
        _need_inputs("forward_backward_all", kwargs)
        blobs, diffs = list(blobs or []), list(diffs or [])
        all_outs: dict[str, list[np.ndarray]] = {out: [] for out in
                                                 set(self.outputs + blobs)}
        all_diffs: dict[str, list[np.ndarray]] = {name: [] for name in
                                                  set(self.inputs + diffs)}
        forward_batches = self._batch({name: kwargs[name] for name in self.inputs
                                       if name in kwargs})
        backward_batches = self._batch({name: kwargs[name] for name in self.outputs
                                        if name in kwargs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for out, array in self.forward(blobs=blobs, **fb).items():
                all_outs[out].append(array.copy())
            for name, array in self.backward(diffs=diffs, **bb).items():
                all_diffs[name].append(array.copy())
        outs = {out: np.concatenate(chunks) for out, chunks in all_outs.items()}
        grads = {name: np.concatenate(chunks) for name, chunks in all_diffs.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        return _drop_padding(outs, kwargs, pad), _drop_padding(grads, kwargs, pad)

    def _batch(self, blobs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split arrays (equally long) into the net's batch size; the last batch is
        filled up with zeros."""
        if not blobs:
            return
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        remainder = num % batch_size
        for b in range(num // batch_size):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if remainder > 0:
            yield {name: np.concatenate([array[-remainder:], np.zeros(
                (batch_size - remainder,) + array.shape[1:])]) for name, array in blobs.items()}

    # ------------------------------------------------------------------ shapes and weights
    def reshape(self) -> None:
        """Carry the input blobs' shapes through the net (Net::Reshape)."""
        self._prepare()
        self._net.reshape()

    def copy_from(self, filename: PathLike) -> None:
        """Copy weights by layer name from a .caffemodel or HDF5 file; layers the net
        lacks are ignored (Net::CopyTrainedLayersFrom)."""
        self._prepare()
        self._net.copy_from(filename)

    def load_hdf5(self, filename: PathLike) -> None:
        """Copy weights from a Caffe HDF5 weights file (Net::CopyTrainedLayersFromHDF5)."""
        if not h5py.is_hdf5(filename):
            raise WeightsError("is not an HDF5 file (load_hdf5 reads Caffe's HDF5 weights; "
                               "copy_from reads .caffemodel files too)", file=filename)
        self.copy_from(filename)

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s weights for every layer of the same name
        (Net::ShareTrainedLayersWith)."""
        self._prepare()
        self._net.share_weights_from(other._net)

    def save(self, filename: PathLike) -> None:
        """Write the weights as a binary caffemodel, whatever the file name."""
        self._prepare()
        self._net.save(filename, format="caffemodel")

    def save_hdf5(self, filename: PathLike) -> None:
        """Write the weights in Caffe's HDF5 layout, whatever the file name."""
        self._prepare()
        self._net.save(filename, format="hdf5")

    def clear_param_diffs(self) -> None:
        """Zero every learnable param's diff in place (Net::ClearParamDiffs)."""
        self._prepare()
        for entry in self._net.learnable_params:
            if entry.tensor.grad is not None:
                entry.tensor.grad.zero_()

    # ------------------------------------------------------------------ MemoryData
    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Give the first layer, a MemoryData layer, the arrays it serves (a 1-d
        ``labels`` becomes N x 1 x 1 x 1)."""
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        layer = self._net.layers[0] if len(self._net.layers) else None
        if layer is None or layer.type_name != "MemoryData":
            raise NetError("set_input_arrays may only be called if the first layer is a "
                           "MemoryDataLayer", file=self._net.source)
        self._prepare()
        layer.set_input_arrays(data, labels)     # checks the arrays as pycaffe does

    # ------------------------------------------------------------------ callbacks
    def before_forward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(layer_index)`` before each layer's forward."""
        self._callbacks["before_forward"].append(callback)

    def after_forward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(layer_index)`` after each layer's forward."""
        self._callbacks["after_forward"].append(callback)

    def before_backward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(layer_index)`` before each layer's backward."""
        self._callbacks["before_backward"].append(callback)

    def after_backward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(layer_index)`` after each layer's backward."""
        self._callbacks["after_backward"].append(callback)

    def _run_callbacks(self, kind: str, i: int) -> None:
        for callback in self._callbacks[kind]:
            callback(i)
        flush_host_copies()

    # ------------------------------------------------------------------ helpers
    def _layer_index(self, name: str) -> int:
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise ValueError(f"no layer named {name!r} in net {self._net.name!r}") from None

    def _check_range(self, low: int, high: int) -> None:
        if low < 0 or high >= len(self.layers):
            raise IndexError(f"layer range {low}..{high} is outside the net's "
                             f"{len(self.layers)} layers")


class LayerView:
    """A built-in layer of a net, as pycaffe shows it: ``type``, ``blobs`` (its learnable
    blobs) and ``reshape(bottom, top)``."""

    def __init__(self, net: FcnNet, index: int) -> None:
        layer = net.layers[index]
        self._layer = layer
        self.type = layer.type_name
        self.blobs = BlobVec((LayerParam(layer, k) for k in range(len(layer.blobs))),
                             refusal=f"BlobVec.add_blob on the built-in {self.type} layer "
                                     f"'{layer.name}': its learnable blobs are Caffe's")

    def reshape(self, bottom, top) -> None:
        """Reshape the ``top`` blobs for the ``bottom`` blobs' shapes (Layer::Reshape)."""
        shapes = self._layer.reshape([tuple(blob.shape) for blob in bottom])
        for blob, shape in zip(top, shapes):
            blob.reshape(*shape)

    def setup(self, bottom, top) -> None:
        raise NotImplementedError(f"Layer.setup on the built-in {self.type} layer "
                                  f"'{self._layer.name}': fcnwild sets a layer up once, when "
                                  "its net is built")

    def __repr__(self) -> str:
        return f"<caffe Layer {self._layer.name!r} type {self.type}>"


def release_views(net: FcnNet) -> None:
    """After a device move, views read before belong to the old buffers: the blobs stop
    copying into them."""
    for blob in net.blobs.values():
        blob.pinned = False


def _layer_view(net: FcnNet, index: int):
    """A Python layer is the user's own layer object, as in pycaffe."""
    layer = net.layers[index]
    return layer.py_layer if layer.type_name == "Python" else LayerView(net, index)


def _net_arguments(network_file: PathLike, args: tuple, kwargs: dict
                   ) -> tuple[int, int, list[str] | None, PathLike | None]:
    """(phase, level, stages, weights) from either of pycaffe's Net signatures."""
    if len(args) == 2 and not kwargs and isinstance(args[0], (str, os.PathLike)):
        weights, phase = args
        log.warning("DEPRECATION WARNING - deprecated use of Python interface; use "
                    "Net('%s', %s, weights='%s') instead", network_file, phase, weights)
        return phase, 0, None, weights
    if len(args) > len(_NET_ARGUMENTS):
        raise TypeError(f"Net() takes at most {len(_NET_ARGUMENTS) + 1} positional arguments")
    values = dict(zip(_NET_ARGUMENTS, args))
    for key, value in kwargs.items():
        if key not in _NET_ARGUMENTS:
            raise TypeError(f"Net() got an unexpected keyword argument '{key}'")
        if key in values:
            raise TypeError(f"Net() got multiple values for argument '{key}'")
        values[key] = value
    if "phase" not in values:
        raise TypeError("Net() needs a phase: Net(network_file, caffe.TEST) or caffe.TRAIN")
    return values["phase"], int(values.get("level", 0)), values.get("stages"), \
        values.get("weights")


def check_file(path: PathLike, error: type[FcnwildError]) -> None:
    """pycaffe's CheckFile: a clear error before anything is built."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise error(f"Could not open file {path} ({err.strerror})", file=path) from None


def _need_inputs(method: str, kwargs: dict) -> None:
    if not kwargs:
        raise TypeError(f"{method}() needs the arrays to feed as keyword arguments "
                        "(input blob name=array)")


def _drop_padding(outs: dict[str, np.ndarray], kwargs: dict[str, np.ndarray],
                  pad: int | None = None) -> dict[str, np.ndarray]:
    """Cut the rows the zero padding of the last batch produced (pycaffe counts them from
    the first output and the first input)."""
    if pad is None:
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
    if pad:
        outs = {name: array[:-pad] for name, array in outs.items()}
    return outs
