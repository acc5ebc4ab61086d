"""``caffe.pycaffe``: the module pycaffe's Python wrappers live in (``Net``, the solvers,
``NCCL``, ``Timer``), for scripts that import it by that name."""
from fcnwild.caffe._caffe import NCCL, Timer
from fcnwild.caffe.net import Net
from fcnwild.caffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)

__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "NCCL", "Timer"]
