"""fcnwild.caffe: pycaffe's Python interface (``import caffe``) on fcnwild's Net and Solver.

Scripts written for BVLC Caffe's pycaffe run unchanged with ``caffe`` resolving
here: ``fcnwild pycaffe SCRIPT [ARGS...]`` runs one so, and the folder printed by
``fcnwild pycaffe --shim-path`` put on ``PYTHONPATH`` makes ``import caffe`` find
this package. Installing fcnwild never shadows a real pycaffe.
"""
from fcnwild.base.caffe_pb2 import TEST, TRAIN
from fcnwild.caffe._caffe import (
    NCCL,
    Timer,
    __version__,
    has_nccl,
    init_log,
    layer_type_list,
    log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from fcnwild.caffe.blob import Blob
from fcnwild.caffe.net import Net
from fcnwild.caffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)
from fcnwild.layers.python_layer import PythonLayerBase as Layer

__all__ = [
    "Net", "Blob", "Layer", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "get_solver", "NCCL", "Timer", "init_log", "log",
    "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "layer_type_list",
    "solver_count", "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
    "has_nccl", "__version__", "TRAIN", "TEST",
]
