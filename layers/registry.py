"""Layer registry keyed by Caffe type string (Caffe's LayerRegistry)."""
from __future__ import annotations

from typing import Callable, TypeVar

from fcnwild.base.errors import NetError

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(type_name: str) -> Callable[[T], T]:
    """Class decorator: register a Layer subclass under its Caffe type string."""
    def decorate(cls: T) -> T:
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type {type_name!r} registered twice")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls
    return decorate


def layer_class(type_name: str, *, layer: str | None = None, file: str | None = None) -> type:
    """The class registered for ``type_name``; a NetError naming the layer otherwise.

    Every layer is registered by then: importing this module imports the package
    ``fcnwild.layers`` first, which imports every layer module."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(registered_types())
        raise NetError(f"unknown layer type {type_name!r}; known types: {known}",
                       layer=layer, file=file) from None


def registered_types() -> list[str]:
    """Every registered Caffe type string, sorted."""
    return sorted(_REGISTRY)
