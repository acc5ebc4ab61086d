"""pycaffe's net specification: write nets in Python, get a NetParameter.

``caffe.layers`` (``L``) makes a layer of any type from its attribute name,
``L.Convolution(bottom, kernel_size=3, num_output=64)``; ``caffe.params``
(``P``) gives enum constants, ``P.Pooling.MAX``; a ``NetSpec`` names the tops
assigned to it and ``to_proto()`` returns the NetParameter that computes them.
Names, auto-naming, in-place tops and the way keyword arguments land in the
LayerParameter follow pycaffe exactly, so a pycaffe ``net.py`` writes the same
prototxt text here.

Keyword arguments of a layer function: ``ntop`` (number of tops, 0 returns the
layer itself), ``in_place`` (tops = bottoms); any key ending in ``param``
(``param``, ``convolution_param``, ``loss_param``, ...) is a LayerParameter
field; any other key goes into the layer type's own ``*_param`` message when
it has that field (``kernel_size`` of a Convolution), else into
LayerParameter (``name``, ``loss_weight``, ``include``, ``top``, ...). Values:
dicts fill messages, lists fill repeated fields (a list of dicts adds one
message each), a single value given for a repeated field becomes a
one-element list.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from fcnwild.base import caffe_pb2

# fcnwild layer types whose parameter message is not named after the type
# (pycaffe's rule below would miss them).
_FCNWILD_PARAM_NAMES = {"ConstrainedMILLoss": "constrained_mil"}


def param_name_dict() -> dict[str, str]:
    """Map layer type names to their ``*_param`` field names without the suffix,
    derived as pycaffe does from LayerParameter's ``*_param`` fields and the names
    of their messages: ``ConvolutionParameter convolution_param`` gives
    ``'Convolution': 'convolution'``. Message names are not always layer types
    (``'Transformation': 'transform'``, ``'Loss': 'loss'``), as in pycaffe."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param"):
            names[field.message_type.name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute ``tops``; unnamed tops and
    layers are auto-named ``<Type><count>``."""
    layers: OrderedDict[Function, caffe_pb2.LayerParameter] = OrderedDict()
    autonames: Counter[str] = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Assign ``val`` to field ``name`` of ``proto``: a list fills a repeated field
    (a list of dicts adds one message per dict), a dict fills a message field
    recursively, a single value for a repeated field is taken as a one-element
    list, anything else is set directly."""
    try:
        field = getattr(proto, name)
    except AttributeError:
        raise AttributeError(f"{proto.DESCRIPTOR.full_name} has no field named "
                             f"'{name}'") from None
    if hasattr(field, "extend") and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        if val and isinstance(val[0], dict):
            for item in val:
                message = field.add()
                for key, value in item.items():
                    assign_proto(message, key, value)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for key, value in val.items():
            assign_proto(field, key, value)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer: the ``n``-th top of Function ``fn``."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its bottoms (Tops of other layers) and its parameters
    (the layer function's keyword arguments, kept as given; coord_map reads them)."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]) -> None:
        self.type_name = type_name
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is "
                                f"{type(bottom)})")
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames) -> str:
        # A layer takes its first top's name; a layer without tops gets its own.
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottom_names = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottom_names.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)

        for key, value in self.params.items():
            if key.endswith("param"):
                self._assign(layer, key, value)
                continue
            try:
                type_param = getattr(layer, _param_names[self.type_name] + "_param")
                assign_proto(type_param, key, value)
            except (AttributeError, KeyError):
                self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer: caffe_pb2.LayerParameter, key: str, value: Any) -> None:
        try:
            assign_proto(layer, key, value)
        except AttributeError as err:
            raise AttributeError(f"{self.type_name} layer '{layer.name}': cannot set "
                                 f"{key}={value!r}: {err}") from None


class _UnknownTop(KeyError, AttributeError):
    """pycaffe raises KeyError for an unknown NetSpec name; being an AttributeError
    too keeps ``hasattr``, ``copy`` and ``pickle`` working on a NetSpec."""


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) or items are
    named by their attribute; ``to_proto()`` returns the NetParameter computing all
    of them, in assignment order."""

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Top | Function) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top | Function:
        try:
            return self.__dict__["tops"][name]
        except KeyError:
            raise _UnknownTop(name) from None

    def __setitem__(self, key: str, value: Top | Function) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Top | Function:
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list[Top | Function]:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter[str] = Counter()
        layers: OrderedDict[Function, caffe_pb2.LayerParameter] = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``layers.<Type>(*bottoms, **params)`` specifies a layer of that type and
    returns its Top, its tuple of Tops (``ntop`` > 1) or, with ``ntop=0``, the
    layer itself."""

    def __getattr__(self, name: str) -> Callable[..., Top | tuple | Function]:
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any) -> Top | tuple | Function:
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        return layer_fn


class _ParameterEnums:
    def __init__(self, message_name: str) -> None:
        self._message = getattr(caffe_pb2, message_name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


class Parameters:
    """``params.<Type>.<CONSTANT>`` is a constant of ``<Type>Parameter``, e.g.
    ``params.Pooling.MAX`` or ``params.Eltwise.SUM``."""

    def __getattr__(self, name: str) -> _ParameterEnums:
        if name.startswith("__"):
            raise AttributeError(name)
        return _ParameterEnums(name + "Parameter")


_param_names = {**param_name_dict(), **_FCNWILD_PARAM_NAMES}
layers = Layers()
params = Parameters()
