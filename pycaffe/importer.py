"""Make ``import caffe`` (and ``caffe.proto.caffe_pb2``, ``caffe.io``, ...) resolve to
``fcnwild.caffe``: the same module objects, never second copies.

Only ``fcnwild pycaffe SCRIPT`` and the opt-in shim folder (``fcnwild pycaffe
--shim-path``) call ``install_caffe_alias``; importing fcnwild alone never does.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

_ALIAS, _TARGET = "caffe", "fcnwild.caffe"


class _CaffeAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``caffe[.sub]`` as the already importable ``fcnwild.caffe[.sub]``."""

    def __init__(self) -> None:
        self._specs: dict[str, ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname != _ALIAS and not fullname.startswith(_ALIAS + "."):
            return None
        real = _TARGET + fullname[len(_ALIAS):]
        try:
            real_spec = importlib.util.find_spec(real)
        except ModuleNotFoundError:
            return None
        if real_spec is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, is_package=real_spec.submodule_search_locations is not None)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(_TARGET + spec.name[len(_ALIAS):])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias spec on the module; it keeps its own.
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install_caffe_alias() -> None:
    """From now on ``import caffe[.sub]`` gives ``fcnwild.caffe[.sub]``."""
    if not any(isinstance(finder, _CaffeAlias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CaffeAlias())
    sys.modules[_ALIAS] = importlib.import_module(_TARGET)
    for name, module in list(sys.modules.items()):
        if name.startswith(_TARGET + "."):
            sys.modules[_ALIAS + name[len(_TARGET):]] = module
