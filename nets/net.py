"""The Net: a graph of named blobs assembled from a prototxt, run layer by layer.

Assembly follows Caffe's Net::Init: upgrade the NetParameter, filter it by
NetState, insert implicit Split layers, then connect each layer's bottoms and
tops by name (a top named like its bottom is in place), decide which layers
and blobs need backward (loss reachability, ``propagate_down``,
``force_backward``, ``lr_mult``), set loss weights and share params by name.

Backward mirrors Caffe too: each layer is run on detached copies of its
bottoms, and ``backward`` walks the layers in reverse, asking torch autograd
for that one layer's bottom and param diffs given its top diffs. So every
blob has a diff (as in Caffe, an in-place blob's diff is the one w.r.t. the
in-place layer's input), param diffs accumulate until cleared, and per-layer
timing and ``start``/``end`` ranges work as in pycaffe. Elementwise layers used
in place (ReLU, Dropout) really overwrite their blob, as Caffe does, and apply
their backward to the diff in place.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError, WeightsError
from fcnwild.layers import buffers
from fcnwild.layers.base import Layer, LayerContext
from fcnwild.layers.registry import layer_class
from fcnwild.nets import precision
from fcnwild.nets.blob import Blob, ParamBlob
from fcnwild.nets.netstate import filter_net, make_state
from fcnwild.nets.prototxt import read_net_param
from fcnwild.nets.splits import insert_splits
from fcnwild.nets.upgrade import upgrade_net
from fcnwild.nets.weights import (
    is_hdf5,
    is_torch,
    open_weights,
    write_caffemodel,
    write_caffemodel_h5,
    write_torch_weights,
)

PathLike = str | os.PathLike
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
_PHASES = {"train": TRAIN, "test": TEST}
_REDUCED = (torch.bfloat16, torch.float16)


def parse_phase(phase: int | str) -> int:
    if isinstance(phase, str):
        try:
            return _PHASES[phase.lower()]
        except KeyError:
            raise NetError(f"unknown phase {phase!r}; expected 'train' or 'test'") from None
    if phase not in (TRAIN, TEST):
        raise NetError(f"unknown phase {phase!r}; expected TRAIN (0) or TEST (1)")
    return int(phase)


@dataclass
class LearnableParam:
    """One solver-visible parameter (a shared blob appears once, under its owner)."""
    tensor: nn.Parameter
    lr_mult: float
    decay_mult: float
    layer: str
    index: int
    name: str           # ParamSpec name, or "" when anonymous
    has_lr: bool = False
    has_decay: bool = False


class Net(nn.Module):
    """A Caffe net: ``Net(model, weights=None, phase=TEST)``.

    ``model`` is a prototxt (or binary NetParameter) path or a NetParameter.
    The pycaffe facade: ``net.blobs[name].data/.diff``, ``net.params[layer][i]``,
    ``net.forward(**inputs)``, ``net.backward(**top_diffs)``, ``net.copy_from``,
    ``net.save``. It is also a ``torch.nn.Module`` (``net.to("cuda")``,
    ``net.double()``, ``state_dict``).
    """

    def __init__(self, model: PathLike | caffe_pb2.NetParameter,
                 weights: PathLike | None = None, phase: int | str = TEST, *,
                 level: int = 0, stages: Sequence[str] = (),
                 state: caffe_pb2.NetState | None = None, allow_python: bool = False) -> None:
        super().__init__()
        if isinstance(model, caffe_pb2.NetParameter):
            self.source: str | None = None
            raw = upgrade_net(model)
        else:
            self.source = str(model)
            raw = read_net_param(model)
        base_dir = Path(self.source).resolve().parent if self.source else None
        if state is None:
            state = make_state(parse_phase(phase), level, stages, base=raw.state)
        self.phase = state.phase
        filtered = filter_net(raw, state, file=self.source)
        self.net_param = insert_splits(filtered, file=self.source)
        self.name = self.net_param.name
        self.force_backward = self.net_param.force_backward

        self.layers = nn.ModuleList()
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        self.bottom_names: list[list[str]] = []
        self.top_names: list[list[str]] = []
        self._build(base_dir, allow_python)
        self._built_loss = dict(self.loss_weights)
        self._decide_backward()
        self._share_params()
        self._layer_io: list[tuple[list[Tensor], tuple[Tensor, ...]] | None] = \
            [None] * len(self.layers)
        self._precision = "fp32"
        self._memory_format = torch.contiguous_format
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ assembly
    def _build(self, base_dir: Path | None, allow_python: bool) -> None:
        names_seen: set[str] = set()
        self.loss_weights: dict[str, float] = {}
        self.inputs: list[str] = []
        self._inplace: list[bool] = []
        consumed: set[str] = set()
        for param in self.net_param.layer:
            where = dict(layer=param.name, file=self.source)
            if param.name in names_seen:
                raise NetError("two layers share this name; layer names must be unique "
                               "(weights are matched by name)", **where)
            names_seen.add(param.name)
            layer_param = caffe_pb2.LayerParameter()
            layer_param.CopyFrom(param)
            if not layer_param.HasField("phase"):
                layer_param.phase = self.phase
            ctx = LayerContext(phase=layer_param.phase, source=self.source, base_dir=base_dir,
                               allow_python=allow_python)
            layer: Layer = layer_class(param.type, **where)(layer_param, ctx)
            if len(param.propagate_down) not in (0, len(param.bottom)):
                raise NetError(f"propagate_down is given {len(param.propagate_down)} times; "
                               f"expected 0 or once per bottom ({len(param.bottom)})", **where)
            bottom_shapes = []
            for name in param.bottom:
                if name not in self.blobs:
                    raise NetError(f"unknown bottom blob '{name}'", **where)
                bottom_shapes.append(self.blobs[name].shape)
                consumed.add(name)
            layer.setup(bottom_shapes)
            top_shapes = layer.reshape(bottom_shapes)
            if len(top_shapes) != len(param.top):
                raise NetError(f"layer produced {len(top_shapes)} top shapes for "
                               f"{len(param.top)} tops", **where)
            for j, (name, shape) in enumerate(zip(param.top, top_shapes)):
                in_place = j < len(param.bottom) and param.bottom[j] == name
                if name in self.blobs and not in_place:
                    raise NetError(f"top blob '{name}' is produced by more than one layer "
                                   "(in place is only allowed as top j == bottom j)", **where)
                if in_place:
                    self.blobs[name].reshape(shape)
                    consumed.discard(name)
                else:
                    self.blobs[name] = Blob(name, shape)
            self._set_loss_weights(layer, param)
            self._inplace.append(getattr(layer, "supports_inplace", False)
                                 and len(param.bottom) == 1 and len(param.top) == 1
                                 and param.bottom[0] == param.top[0])
            if param.type == "Input":
                self.inputs.extend(param.top)
            self.layers.append(layer)
            self.bottom_names.append(list(param.bottom))
            self.top_names.append(list(param.top))
        self.outputs = [name for name in self.blobs if name not in consumed]
        self.layer_dict: OrderedDict[str, Layer] = OrderedDict(
            (layer.name, layer) for layer in self.layers)

    def _set_loss_weights(self, layer: Layer, param: caffe_pb2.LayerParameter) -> None:
        weights = list(param.loss_weight)
        if weights and len(weights) != len(param.top):
            raise NetError(f"loss_weight must be unspecified or given once per top blob "
                           f"({len(param.top)}), found {len(weights)}", layer=param.name,
                           file=self.source)
        if not weights and layer.is_loss:
            weights = [1.0] + [0.0] * (len(param.top) - 1)
        for name, weight in zip(param.top, weights):
            if weight:
                self.loss_weights[name] = float(weight)

    def _decide_backward(self) -> None:
        """Caffe's need-backward analysis (Net::Init), including force_backward."""
        n = len(self.layers)
        blob_need = {name: False for name in self.blobs}
        self.layer_need_backward = [False] * n
        self.bottom_need_backward: list[list[bool]] = []
        self.param_propagate_down: list[list[bool]] = []
        for i, layer in enumerate(self.layers):
            param = layer.param
            need = False
            bottoms = []
            for j, name in enumerate(self.bottom_names[i]):
                need |= blob_need[name]
                wanted = param.propagate_down[j] if len(param.propagate_down) else blob_need[name]
                bottoms.append(bool(wanted) and j not in layer.no_grad_bottoms)
            self.bottom_need_backward.append(bottoms)
            propagate = [(param.param[k].lr_mult if k < len(param.param) else 1.0) != 0
                         for k in range(len(layer.blobs))]
            if len(param.param) > len(layer.blobs):
                raise NetError(f"{len(param.param)} param specs for {len(layer.blobs)} "
                               "learnable blobs", layer=layer.name, file=self.source)
            need |= any(propagate)
            self.param_propagate_down.append(propagate)
            self.layer_need_backward[i] = need
            if need:
                for name in self.top_names[i]:
                    blob_need[name] = True

        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for i in reversed(range(n)):
            tops = self.top_names[i]
            contributes = any(name in self.loss_weights or name in under_loss for name in tops)
            skip_all = all(name in skip_backprop for name in tops)
            if self.layer_need_backward[i] and skip_all:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_names[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(self.bottom_names[i]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip_backprop.add(name)

        if self.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    need or j not in layer.no_grad_bottoms
                    for j, need in enumerate(self.bottom_need_backward[i])]
                self.param_propagate_down[i] = [True] * len(layer.blobs)

    def _share_params(self) -> None:
        """Weight sharing by ParamSpec name; builds the solver's learnable-param list."""
        owners: dict[str, LearnableParam] = {}
        self.learnable_params: list[LearnableParam] = []
        self.params: OrderedDict[str, list[ParamBlob]] = OrderedDict()
        wants_grad: dict[int, bool] = {}
        for i, layer in enumerate(self.layers):
            specs = layer.param.param
            for k in range(len(layer.blobs)):
                spec = specs[k] if k < len(specs) else caffe_pb2.ParamSpec()
                name = spec.name
                owner = owners.get(name) if name else None
                if owner is None:
                    entry = LearnableParam(layer.blobs[k], spec.lr_mult, spec.decay_mult,
                                           layer.name, k, name, spec.HasField("lr_mult"),
                                           spec.HasField("decay_mult"))
                    self.learnable_params.append(entry)
                    if name:
                        owners[name] = entry
                else:
                    self._check_shared(layer, k, spec, owner)
                    layer.blobs[k] = owner.tensor
                tensor = layer.blobs[k]
                wants_grad[id(tensor)] = wants_grad.get(id(tensor), False) or \
                    self.param_propagate_down[i][k]
            if len(layer.blobs):
                self.params[layer.name] = [ParamBlob(b) for b in layer.blobs]
        # Only ever switch gradients off: a blob its layer created without them (BatchNorm
        # statistics) never gets a diff, as in Caffe, even under force_backward.
        for entry in self.learnable_params:
            entry.tensor.requires_grad_(entry.tensor.requires_grad and
                                        wants_grad[id(entry.tensor)])

    def _check_shared(self, layer: Layer, k: int, spec: caffe_pb2.ParamSpec,
                      owner: LearnableParam) -> None:
        mine, theirs = tuple(layer.blobs[k].shape), tuple(owner.tensor.shape)
        where = dict(layer=layer.name, file=self.source)
        if mine != theirs:
            mode = "count" if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE else "shape"
            raise NetError(f"cannot share param '{spec.name}' owned by layer '{owner.layer}': "
                           f"owner shape {theirs}, this layer's shape {mine} ({mode} check; "
                           "fcnwild shares only identically shaped blobs)", **where)
        for field, has in (("lr_mult", "has_lr"), ("decay_mult", "has_decay")):
            if not spec.HasField(field):
                continue
            value = getattr(spec, field)
            if not getattr(owner, has):
                setattr(owner, field, value)
                setattr(owner, has, True)
            elif getattr(owner, field) != value:
                raise NetError(f"shared param '{spec.name}' has mismatched {field}: {value} "
                               f"here, {getattr(owner, field)} in layer '{owner.layer}'",
                               **where)

    # ------------------------------------------------------------------ precision
    @property
    def precision(self) -> str:
        """What the forward computes in: ``fp32`` (Caffe's), ``tf32`` or ``bf16``
        (nets/precision.py); backward follows the forward's dtypes."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = precision.check(value)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the 4-D blobs: ``torch.contiguous_format`` (NCHW, Caffe's) or
        ``torch.channels_last``. Data entering the net (inputs, data layers' tops) is
        laid out so; every layer keeps its input's layout. Weights stay as they are."""
        return self._memory_format

    @memory_format.setter
    def memory_format(self, value: torch.memory_format) -> None:
        if value not in (torch.contiguous_format, torch.channels_last):
            raise NetError(f"memory format {value} is not supported; use "
                           "torch.contiguous_format or torch.channels_last", file=self.source)
        self._memory_format = value
        for name in self.inputs:
            blob = self.blobs[name]
            if blob._data is not None:
                blob.tensor = self._in_memory_format(blob._data)

    def _in_memory_format(self, tensor: Tensor) -> Tensor:
        if (self._memory_format == torch.contiguous_format or tensor.dim() != 4
                or not tensor.is_floating_point()):
            return tensor
        return tensor.contiguous(memory_format=self._memory_format)

    def to(self, *args, **kwargs) -> "Net":
        """``nn.Module.to``; ``memory_format=`` sets the blobs' layout (``memory_format``)
        instead of the weights'."""
        fmt = kwargs.pop("memory_format", None)
        if args or kwargs:
            super().to(*args, **kwargs)
        if fmt is not None:
            self.memory_format = fmt
        return self

    # ------------------------------------------------------------------ device moves
    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for blob in self.blobs.values():
            if blob._data is not None:
                blob._data = fn(blob._data.detach())
            if blob._diff is not None:
                blob._diff = fn(blob._diff)
        reference = next((p for p in self.parameters()), None)
        if reference is not None:
            for blob in self.blobs.values():
                blob._device = reference.device
                blob._dtype = reference.dtype
        self._layer_io = [None] * len(self.layers)
        return self

    # ------------------------------------------------------------------ forward
    def set_input(self, name: str, value: np.ndarray | Tensor) -> None:
        """Feed an input blob; a tensor already on the net's device is used without a copy."""
        if name not in self.blobs:
            raise NetError(f"no blob named '{name}'; inputs are {self.inputs}", file=self.source)
        blob = self.blobs[name]
        tensor = torch.as_tensor(value)
        if tensor.device != blob._device or tensor.dtype != blob._dtype:
            tensor = tensor.to(device=blob._device, dtype=blob._dtype)
        blob.tensor = self._in_memory_format(tensor.detach())

    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None,
                end: str | None = None, **inputs: np.ndarray | Tensor) -> dict[str, np.ndarray]:
        """Run layers ``start``..``end`` (names; default all) and return the output blobs
        (plus ``blobs``) as numpy arrays, as pycaffe does."""
        for name, value in inputs.items():
            self.set_input(name, value)
        first = self._layer_index(start) if start else 0
        last = self._layer_index(end) if end else len(self.layers) - 1
        self.forward_range(first, last)
        names = list(self.outputs if end is None else self.top_names[last])
        names += [b for b in (blobs or ()) if b not in names]
        return {name: self.blobs[name].data for name in names}

    def forward_range(self, first: int, last: int) -> float:
        """Run layers ``first``..``last`` (indices); return the weighted loss they produced."""
        loss = None
        for i in range(first, last + 1):
            layer_loss = self.forward_layer(i)
            if layer_loss is not None:
                loss = layer_loss if loss is None else loss + layer_loss
        return 0.0 if loss is None else float(loss)

    def forward_layer(self, i: int) -> Tensor | None:
        """Run layer ``i``; return its weighted loss contribution (a tensor) or None."""
        layer = self.layers[i]
        if layer.type_name == "Input":
            return self._weighted_loss(i)
        record = torch.is_grad_enabled() and self.layer_need_backward[i]
        if self._inplace[i]:
            name = self.bottom_names[i][0]
            with torch.no_grad():
                layer.forward_inplace(self.blobs[name].tensor)
            return self._weighted_loss(i)
        bottoms, tops = self._run_layer(i, record, replace_tops=True)
        for name, top in zip(self.top_names[i], tops):
            self.blobs[name].tensor = top
        self._layer_io[i] = (bottoms, tops) if record else None
        return self._weighted_loss(i)

    def _run_layer(self, i: int, record: bool, replace_tops: bool = False
                   ) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        """Layer ``i``'s forward on detached copies of its bottoms; with ``record``, autograd
        records it for the layer's own backward; with ``replace_tops``, the new tops take
        the place of the old ones."""
        layer = self.layers[i]
        bottoms = []
        for j, name in enumerate(self.bottom_names[i]):
            tensor = self.blobs[name].tensor.detach()
            if record and self.bottom_need_backward[i][j]:
                tensor.requires_grad_()
            bottoms.append(tensor)
        offered = self._release_tops(i, bottoms, record) if replace_tops else []
        with torch.set_grad_enabled(record), contextlib.ExitStack() as scope:
            tops = self._run_in_precision(layer, bottoms, scope)
        for bottom in offered:
            buffers.discard(bottom, buffers.OUTPUT)
        if len(tops) != len(self.top_names[i]):
            raise NetError(f"forward returned {len(tops)} tops, expected "
                           f"{len(self.top_names[i])}", layer=layer.name, file=self.source)
        if not bottoms:                      # data enters the net here
            tops = tuple(self._in_memory_format(top) for top in tops)
        return bottoms, tops

    def _release_tops(self, i: int, bottoms: list[Tensor], record: bool) -> list[Tensor]:
        """Let layer ``i``'s previous tops (and the last pass's graph) go before the new
        ones are computed. In a training pass, top j's old data is offered to the kernel
        computing the new top j from bottom j (layers/buffers.py), as Caffe overwrites its
        blobs; otherwise the new tops can take the freed memory. Returns the bottoms that
        were offered memory."""
        self._layer_io[i] = None
        offered = []
        for j, name in enumerate(self.top_names[i]):
            if name not in self.bottom_names[i]:
                old = self.blobs[name].release_data()
                if record and j < len(bottoms):
                    buffers.park(bottoms[j], old, buffers.OUTPUT)
                    offered.append(bottoms[j])
                del old
        return offered

    def _run_in_precision(self, layer: Layer, bottoms: list[Tensor],
                          scope: contextlib.ExitStack) -> tuple[Tensor, ...]:
        """The layer's forward in the net's precision (nets/precision.py): under bf16
        autocast, except losses, softmax and metrics, which see float32 bottoms."""
        dtype = precision.autocast_dtype(self.precision)
        if dtype is None:
            return layer(*bottoms)
        device = bottoms[0].device.type if bottoms else "cpu"
        if layer.is_loss or layer.full_precision:
            scope.enter_context(torch.autocast(device, enabled=False))
            return layer(*[b.float() if b.dtype in _REDUCED else b for b in bottoms])
        scope.enter_context(torch.autocast(device, dtype=dtype))
        return layer(*bottoms)

    def _weighted_loss(self, i: int) -> Tensor | None:
        loss = None
        for name in self.top_names[i]:
            weight = self.loss_weights.get(name)
            if weight is None:
                continue
            blob = self.blobs[name]
            # Caffe keeps the loss weight in the loss top's diff: it seeds backward.
            blob.grad = torch.full_like(blob.tensor.detach(), weight)
            term = weight * blob.tensor.detach().sum()
            loss = term if loss is None else loss + term
        return loss

    # ------------------------------------------------------------------ backward
    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None,
                 end: str | None = None, **top_diffs: np.ndarray | Tensor
                 ) -> dict[str, np.ndarray]:
        """Back-propagate from layer ``start`` down to ``end`` (default: all).

        Keyword arguments set top diffs (for outputs without a loss weight);
        returns the diffs of the net's inputs (plus ``diffs``), as pycaffe does.
        """
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise NetError(f"no blob named '{name}' to set a diff on", file=self.source)
            self.blobs[name].diff = value
        first = self._layer_index(start) if start else len(self.layers) - 1
        last = self._layer_index(end) if end else 0
        self.backward_range(first, last)
        names = list(self.inputs) + [d for d in (diffs or ()) if d not in self.inputs]
        return {name: self.blobs[name].diff for name in names}

    def backward_range(self, first: int, last: int) -> None:
        for i in range(first, last - 1, -1):
            self.backward_layer(i)

    def backward_layer(self, i: int) -> None:
        layer = self.layers[i]
        if not self.layer_need_backward[i] or layer.type_name == "Input":
            return
        if self._inplace[i]:
            name = self.top_names[i][0]
            with torch.no_grad():
                layer.backward_inplace(self.blobs[name].grad)
            return
        io = self._layer_io[i]
        self._layer_io[i] = None
        if io is None:
            # Caffe's Backward reads the blobs as they are, with or without a forward
            # since the last backward: record this layer's forward on its bottoms now
            # (a Dropout layer used out of place then draws a new mask).
            io = self._run_layer(i, record=True)
        bottoms, tops = io
        outputs, grads = [], []
        for name, top in zip(self.top_names[i], tops):
            if top.requires_grad:
                outputs.append(top)
                grads.append(self.blobs[name].grad)
        wanted = [b for j, b in enumerate(bottoms) if self.bottom_need_backward[i][j]]
        wanted += [p for k, p in enumerate(layer.blobs)
                   if self.param_propagate_down[i][k] and p.requires_grad]
        # The bottom diffs this pass replaces are offered as memory for their
        # replacements (layers/buffers.py), as Caffe overwrites its diffs.
        for j, name in enumerate(self.bottom_names[i]):
            if (self.bottom_need_backward[i][j] and name not in self.loss_weights
                    and name not in self.top_names[i]):
                buffers.park(bottoms[j], self.blobs[name].release_diff())
        if outputs and wanted:
            torch.autograd.backward(outputs, grads, inputs=wanted)
        for tensor in (*bottoms, *layer.blobs):
            buffers.discard(tensor)
        for j, name in enumerate(self.bottom_names[i]):
            if self.bottom_need_backward[i][j]:
                grad = bottoms[j].grad
                self.blobs[name].grad = grad if grad is not None else \
                    torch.zeros_like(bottoms[j])

    def forward_backward(self) -> float:
        """One forward and backward over the whole net; returns the weighted loss."""
        loss = self.forward_range(0, len(self.layers) - 1)
        self.backward_range(len(self.layers) - 1, 0)
        return loss

    def set_loss_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the loss weights (e.g. per step of an alternating solver).

        Only tops that carry a loss weight in the prototxt may be weighted here: the
        need-backward analysis was made for those. Tops dropped from the loss get a
        zero diff, so nothing stale seeds the next backward."""
        unknown = [name for name, w in weights.items() if w and name not in self._built_loss]
        if unknown:
            raise NetError(f"cannot weight {unknown}: only tops with a loss weight in the net "
                           f"definition can be ({sorted(self._built_loss)})", file=self.source)
        for name in self.loss_weights:
            if not weights.get(name):
                self.blobs[name].grad = None
        self.loss_weights = {name: float(w) for name, w in weights.items() if w}

    @property
    def loss_tops(self) -> list[str]:
        """Tops with a loss weight in the net definition (whatever the current weights)."""
        return list(self._built_loss)

    def clear_param_diffs(self) -> None:
        """Zero every param diff (Caffe's ClearParamDiffs). The old diff tensors stay
        parked on their params for the kernels computing the next ones to write into
        (layers/buffers.py); what no kernel takes goes after the param's layer has run
        backward."""
        for entry in self.learnable_params:
            buffers.park(entry.tensor, entry.tensor.grad)
            entry.tensor.grad = None

    # ------------------------------------------------------------------ shapes
    def reshape(self) -> None:
        """Re-infer every blob's shape from the input blobs' shapes (pycaffe's reshape)."""
        for i, layer in enumerate(self.layers):
            if layer.type_name == "Input":
                continue
            shapes = layer.reshape([self.blobs[name].shape for name in self.bottom_names[i]])
            for name, shape in zip(self.top_names[i], shapes):
                self.blobs[name].reshape(shape)

    def reshape_inputs(self, shapes: Mapping[str, Sequence[int]]) -> None:
        for name, shape in shapes.items():
            if name not in self.inputs:
                raise NetError(f"'{name}' is not an input blob; inputs are {self.inputs}",
                               file=self.source)
            self.blobs[name].reshape(*shape)
        self.reshape()

    # ------------------------------------------------------------------ weights
    def copy_from(self, path: PathLike) -> None:
        """Copy weights by layer name (Caffe's CopyTrainedLayersFrom): unknown source
        layers are ignored; a blob count or shape mismatch is an error."""
        shared_targets = self._shared_targets()
        with open_weights(path) as stored:
            for name, blobs in stored.items():
                layer = self.layer_dict.get(name)
                if layer is None:
                    continue
                where = dict(layer=name, file=path)
                # HDF5 files store a shared param only under its owner, so they may hold fewer.
                if len(blobs) > len(layer.blobs) or (
                        len(blobs) < len(layer.blobs) and not stored.allows_gaps):
                    raise WeightsError(f"incompatible number of blobs: the file has "
                                       f"{len(blobs)}, the net's layer has {len(layer.blobs)}",
                                       **where)
                for k, target in enumerate(layer.blobs):
                    source = blobs[k] if k < len(blobs) else None
                    if source is None:
                        if (name, k) in shared_targets:
                            continue
                        raise WeightsError(f"param {k} is missing from the file", **where)
                    if not source.fits(target.shape):
                        raise WeightsError(
                            f"cannot copy param {k}: shape mismatch, the file has "
                            f"{source.shape}, the net has {tuple(target.shape)}. To learn this "
                            "layer from scratch instead, rename the layer.", **where)
                    _load_into_param(source, target)

    def _shared_targets(self) -> set[tuple[str, int]]:
        """(layer, index) of params that share another layer's blob."""
        owners = {(e.layer, e.index) for e in self.learnable_params}
        return {(layer.name, k) for layer in self.layers for k in range(len(layer.blobs))
                if (layer.name, k) not in owners}

    def weights_dict(self) -> dict[str, list[np.ndarray]]:
        """Layer name -> its param arrays (numpy; views on CPU)."""
        return {name: [p.data for p in blobs] for name, blobs in self.params.items()}

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net as Caffe's Net::ToProto writes it (layers as built, without blobs)."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            entry = out.layer.add()
            entry.CopyFrom(layer.param)
            entry.ClearField("blobs")
        return out

    def save(self, path: PathLike, format: str | None = None) -> None:
        """Write the weights: Caffe's HDF5 layout for .h5, a torch state dict
        ({"<layer>/<i>": tensor}) for .pt/.pth, a binary caffemodel otherwise;
        ``format`` ("hdf5", "torch" or "caffemodel") overrides the file name."""
        if format is None:
            format = "hdf5" if is_hdf5(path) else "torch" if is_torch(path) else "caffemodel"
        if format not in ("hdf5", "torch", "caffemodel"):
            raise NetError(f"unknown weights format {format!r}; expected hdf5, torch or "
                           "caffemodel", file=path)
        if format != "caffemodel":
            shared = self._shared_targets()
            owned = {layer.name: {k: p.detach().cpu().numpy() for k, p in enumerate(layer.blobs)
                                  if (layer.name, k) not in shared} for layer in self.layers}
            if format == "hdf5":
                write_caffemodel_h5(path, [layer.name for layer in self.layers], owned)
            else:
                write_torch_weights(path, {k: v for k, v in owned.items() if v})
        else:
            write_caffemodel(path, self.to_proto(), {
                layer.name: [p.detach().cpu().numpy() for p in layer.blobs]
                for layer in self.layers})

    def share_weights_from(self, other: "Net") -> None:
        """Use ``other``'s param tensors for every layer of the same name (test nets)."""
        for layer in self.layers:
            source = other.layer_dict.get(layer.name)
            if source is None or not len(layer.blobs):
                continue
            if len(source.blobs) != len(layer.blobs):
                raise NetError(f"cannot share weights: {len(source.blobs)} blobs in the other "
                               f"net, {len(layer.blobs)} here", layer=layer.name,
                               file=self.source)
            for k, blob in enumerate(source.blobs):
                if tuple(blob.shape) != tuple(layer.blobs[k].shape):
                    raise NetError(f"cannot share param {k}: shape {tuple(blob.shape)} in the "
                                   f"other net, {tuple(layer.blobs[k].shape)} here",
                                   layer=layer.name, file=self.source)
                layer.blobs[k] = blob
            self.params[layer.name] = [ParamBlob(b) for b in layer.blobs]
        for entry in self.learnable_params:
            entry.tensor = self.layer_dict[entry.layer].blobs[entry.index]

    # ------------------------------------------------------------------ helpers
    def _layer_index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise NetError(f"no layer named '{name}'", file=self.source)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __repr__(self) -> str:
        return (f"Net({self.name!r}, phase={'TRAIN' if self.phase == TRAIN else 'TEST'}, "
                f"{len(self.layers)} layers, inputs={self.inputs}, outputs={self.outputs})")


def _load_into_param(source, target: nn.Parameter) -> None:
    """Read a stored blob into a param's own storage when possible (no extra copy)."""
    with torch.no_grad():
        if target.device.type == "cpu" and target.dtype == torch.float32 \
                and target.is_contiguous():
            source.load_into(target.detach().numpy().reshape(-1))
        else:
            target.copy_(torch.from_numpy(source.load()).reshape(target.shape))
