"""fcnwild.solvers: Caffe's solvers, and FCNs in the Wild's alternating adversarial solver."""
from __future__ import annotations

import os

from fcnwild.base import caffe_pb2
from fcnwild.nets.prototxt import read_solver_param
from fcnwild.solvers.adversarial import AlternatingSolver
from fcnwild.solvers.solver import Solver


def create_solver(solver: str | os.PathLike | caffe_pb2.SolverParameter, **kwargs):
    """The solver a SolverParameter asks for: the alternating adversarial solver when it
    carries ``adversarial_param``, Caffe's Solver otherwise."""
    param = solver if isinstance(solver, caffe_pb2.SolverParameter) else \
        read_solver_param(solver)
    cls = AlternatingSolver if param.HasField("adversarial_param") else Solver
    return cls(solver, **kwargs)
