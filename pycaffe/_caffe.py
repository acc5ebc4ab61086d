"""pycaffe's process-wide state (``caffe._caffe``): mode and device, seeds, logging,
solver counts, NCCL, ``Timer`` and the registry of layer types.

The classes pycaffe's extension module exports (``Net``, ``Blob``, ``Layer``, the
solvers, ``BlobVec`` and the other vector wrappers, ``LayerParameter``,
``SolverParameter``) are reachable here too, as ``caffe._caffe.<name>``.

Caffe keeps one mode for the whole process and every net follows it at its next
call. Here ``set_mode_gpu()`` selects CUDA when torch has it (else it warns once
and stays on the CPU); nets and solvers of ``fcnwild.caffe`` move to the selected
device the next time they run.

Host copies. ``.data``/``.diff`` of a blob on the CPU are views of the tensor the
net computes with. On a CUDA device a blob's ``.data`` is a host copy, as Caffe's
``mutable_cpu_data()`` is: the copies handed out are written back to their device
tensors before the net next computes (``flush_host_copies``, from
``fcnwild.layers.blob_views``, which Python layers share), which is when Caffe moves
a blob's head back to the GPU.
"""
from __future__ import annotations

import importlib
import logging
import sys
import time
import warnings

import torch

from fcnwild.base import caffe_pb2
from fcnwild.layers.blob_views import BlobVec, BlobView  # noqa: F401  (caffe._caffe.BlobVec)
from fcnwild.layers.python_layer import PythonLayerBase
from fcnwild.layers.registry import registered_types

__version__ = "1.0.0"     # the Caffe release whose Python interface this is

_logger = logging.getLogger("fcnwild")

_state = {"gpu": False, "device_id": 0, "generation": 0, "warned": False,
          "solver_count": 1, "solver_rank": 0, "multiprocess": False, "log_handler": None}


# --- mode and device ---------------------------------------------------------------------
def set_mode_cpu() -> None:
    """Run nets on the CPU."""
    _set("gpu", False)


def set_mode_gpu() -> None:
    """Run nets on the CUDA device chosen with ``set_device`` (0 by default); without
    CUDA, warn once and stay on the CPU."""
    if not torch.cuda.is_available():
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn("caffe.set_mode_gpu(): torch has no CUDA device here; fcnwild.caffe "
                          "keeps running on the CPU", RuntimeWarning, stacklevel=2)
        return
    _set("gpu", True)


def set_device(device_id: int) -> None:
    """Choose the CUDA device used in GPU mode (Caffe::SetDevice)."""
    device_id = int(device_id)
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise ValueError(f"caffe.set_device({device_id}): there are "
                         f"{torch.cuda.device_count()} CUDA devices")
    _set("device_id", device_id)


def _set(key: str, value) -> None:
    if _state[key] != value:
        _state[key] = value
        _state["generation"] += 1


def device() -> torch.device:
    """The device nets of ``fcnwild.caffe`` run on now."""
    return torch.device("cuda", _state["device_id"]) if _state["gpu"] else torch.device("cpu")


def generation() -> int:
    """Changes whenever the mode or the device does: nets compare it to know when to move."""
    return _state["generation"]


# --- seeds, logging, solver counts ---------------------------------------------------------
def set_random_seed(seed: int) -> None:
    """Seed the random numbers of fillers, dropout and data layers (Caffe::set_random_seed)."""
    torch.manual_seed(int(seed))


_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level: int | None = None, std_err: bool | None = None) -> None:
    """Caffe's ``init_log()``, ``init_log(level)``, ``init_log(level, stderr)``: show
    fcnwild's log (glog levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) on stderr."""
    if level is not None:
        if int(level) not in _GLOG_LEVELS:
            raise ValueError(f"caffe.init_log: level {level} is not a glog level (0 to 3)")
        _logger.setLevel(_GLOG_LEVELS[int(level)])
    elif _logger.level == logging.NOTSET:
        _logger.setLevel(logging.INFO)
    handler = _state["log_handler"]
    if std_err is False:
        if handler is not None:
            _logger.removeHandler(handler)
            _state["log_handler"] = None
        return
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname).1s%(asctime)s %(name)s] "
                                               "%(message)s", "%m%d %H:%M:%S"))
        _logger.addHandler(handler)
        _state["log_handler"] = handler


def log(message: str) -> None:
    """Caffe's ``LOG(INFO) << message``."""
    _logger.info(message)


def solver_count() -> int:
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    _state["solver_count"] = int(count)


def solver_rank() -> int:
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _state["solver_rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    _state["multiprocess"] = bool(multiprocess)


def check_single_process(what: str) -> None:
    """fcnwild.caffe trains in one process; refuse a multi-solver setup instead of
    silently training each process alone."""
    if _state["solver_count"] > 1:
        raise NotImplementedError(
            f"{what} with caffe.set_solver_count({_state['solver_count']}): fcnwild.caffe has "
            "no multi-process (NCCL) solvers; train on several GPUs with "
            "`fcnwild train -solver S -gpu 0,1`")


def has_nccl() -> bool:
    """fcnwild.caffe has no NCCL solvers (multi-GPU training is ``fcnwild train -gpu``)."""
    return False


class NCCL:
    """pycaffe's NCCL(solver, uid) for multi-GPU solvers: not available here."""

    def __init__(self, solver=None, uid=None) -> None:
        raise NotImplementedError(_no_nccl("caffe.NCCL"))

    @staticmethod
    def new_uid() -> str:
        raise NotImplementedError(_no_nccl("caffe.NCCL.new_uid"))

    def bcast(self) -> None:
        raise NotImplementedError(_no_nccl("NCCL.bcast"))


def _no_nccl(what: str) -> str:
    return (f"{what}: fcnwild.caffe has no NCCL (caffe.has_nccl() is False); train on "
            "several GPUs with `fcnwild train -solver S -gpu 0,1`")


# --- timing and layer types ----------------------------------------------------------------
class Timer:
    """Caffe's Timer: ``start()``, ``stop()``, ``ms`` (stops a running timer first); in GPU
    mode it waits for the device's queued work, as Caffe's CUDA events do."""

    def __init__(self) -> None:
        self._running = False
        self._has_run = False
        self._start = 0.0
        self._elapsed = 0.0

    def start(self) -> None:
        if not self._running:
            _synchronize()
            self._start = time.perf_counter()
            self._running = True
            self._has_run = True

    def stop(self) -> None:
        if self._running:
            _synchronize()
            self._elapsed = time.perf_counter() - self._start
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            _logger.warning("Timer has never been run before reading time.")
            return 0.0
        if self._running:
            self.stop()
        return self._elapsed * 1000.0


def _synchronize() -> None:
    if _state["gpu"]:
        torch.cuda.synchronize(device())


def layer_type_list() -> list[str]:
    """The layer types nets can use, sorted (Caffe's LayerRegistry::LayerTypeList)."""
    return registered_types()


# --- the classes of pycaffe's extension module ------------------------------------------
Blob = BlobView
Layer = PythonLayerBase
LayerParameter = caffe_pb2.LayerParameter
SolverParameter = caffe_pb2.SolverParameter


def _vector(name: str) -> type:
    """pycaffe's wrapper of one std::vector type; fcnwild.caffe hands out plain lists."""
    return type(name, (list,), {"__module__": __name__,
                                "__doc__": f"pycaffe's {name}: a list in fcnwild.caffe."})


RawBlobVec, LayerVec, StringVec, IntVec, DtypeVec, NetVec, BoolVec = (
    _vector(name) for name in ("RawBlobVec", "LayerVec", "StringVec", "IntVec", "DtypeVec",
                               "NetVec", "BoolVec"))

# Defined in modules that import this one: looked up when first asked for.
_LATER = {"Net": "fcnwild.caffe.net", "Solver": "fcnwild.caffe.solver",
          "SGDSolver": "fcnwild.caffe.solver", "NesterovSolver": "fcnwild.caffe.solver",
          "AdaGradSolver": "fcnwild.caffe.solver", "RMSPropSolver": "fcnwild.caffe.solver",
          "AdaDeltaSolver": "fcnwild.caffe.solver", "AdamSolver": "fcnwild.caffe.solver",
          "get_solver": "fcnwild.caffe.solver"}


def __getattr__(name: str):
    if name in _LATER:
        return getattr(importlib.import_module(_LATER[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
