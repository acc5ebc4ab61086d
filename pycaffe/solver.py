"""pycaffe's solvers: ``caffe.SGDSolver(file)`` ... ``caffe.AdamSolver(file)`` and
``caffe.get_solver(file)``, translated onto ``fcnwild.solvers``.

As in Caffe, the class decides the update rule whatever the file's ``type`` says,
and ``get_solver`` follows the file's ``type``. ``solver.net`` and
``solver.test_nets`` are ``caffe.Net`` views onto the solver's own nets.
"""
from __future__ import annotations

import os
from typing import Callable, ClassVar

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import SolverError
from fcnwild.caffe import _caffe
from fcnwild.caffe.net import Net, check_file, release_views
from fcnwild.layers.blob_views import flush_host_copies
from fcnwild.nets.prototxt import read_solver_param
from fcnwild.solvers import create_solver
from fcnwild.solvers.adversarial import AlternatingSolver

PathLike = str | os.PathLike


class Solver:
    """A Caffe solver with pycaffe's interface: ``net``, ``test_nets``, ``iter``,
    ``param``, ``step``, ``solve``, ``snapshot``, ``restore``, ``apply_update``,
    ``add_callback``, ``share_weights``."""

    type_name: ClassVar[str | None] = None      # None: the type the solver file names

    def __init__(self, filename: PathLike) -> None:
        _caffe.check_single_process(f"caffe.{type(self).__name__}")
        check_file(filename, SolverError)
        device = _caffe.device()
        self._solver = create_solver(filename, allow_python=True, solver_type=self.type_name,
                                     device=device if device.type != "cpu" else None)
        self._generation = _caffe.generation()
        self.net = Net._view(self._solver.net, owner=self)
        self.test_nets = [Net._view(net, owner=self) for net in self._solver.test_nets]

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        """A copy of the SolverParameter, as pycaffe returns."""
        copy = caffe_pb2.SolverParameter()
        copy.CopyFrom(self._solver.param)
        return copy

    def _prepare(self) -> None:
        """Before the solver computes: host copies go back, and it follows a mode change."""
        flush_host_copies()
        if self._generation != _caffe.generation():
            self._generation = _caffe.generation()
            self._solver.to(_caffe.device())
            for net in (self._solver.net, *self._solver.test_nets):
                release_views(net)

    def step(self, iters: int) -> None:
        """Train ``iters`` iterations (tests, display and snapshots as the file says)."""
        self._prepare()
        self._solver.step(int(iters))

    def solve(self, resume: PathLike | None = None) -> None:
        """Train to ``max_iter``, from the solverstate ``resume`` if given."""
        self._prepare()
        self._solver.solve(resume)

    def snapshot(self) -> None:
        """Write ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` now."""
        self._prepare()
        self._solver.snapshot()

    def restore(self, state_file: PathLike) -> None:
        """Continue from a ``.solverstate`` (weights, history, iteration)."""
        self._prepare()
        self._solver.restore(state_file)

    def apply_update(self) -> None:
        """Update the weights from the current diffs and advance ``iter``
        (SGDSolver::ApplyUpdate)."""
        self._prepare()
        self._solver.apply_update()
        self._solver.iter += 1

    def add_callback(self, on_start: Callable[[], object],
                     on_gradients_ready: Callable[[], object]) -> None:
        """Call ``on_start()`` before each iteration's forward/backward passes and
        ``on_gradients_ready()`` between them and the update."""
        if isinstance(self._solver, AlternatingSolver):
            raise NotImplementedError("Solver.add_callback on fcnwild's alternating "
                                      "adversarial solver (adversarial_param)")
        self._solver.callbacks.append(_Callback(on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """Make ``net`` use this solver's train net weights."""
        net.share_with(self.net)


class _Callback:
    """A pair of pycaffe callables as a Caffe Solver::Callback; what they wrote into host
    copies of device blobs reaches the device before the solver goes on."""

    def __init__(self, on_start: Callable[[], object],
                 on_gradients_ready: Callable[[], object]) -> None:
        self._on_start, self._on_gradients_ready = on_start, on_gradients_ready

    def on_start(self) -> None:
        self._on_start()
        flush_host_copies()

    def on_gradients_ready(self) -> None:
        self._on_gradients_ready()
        flush_host_copies()


class SGDSolver(Solver):
    type_name = "SGD"


class NesterovSolver(Solver):
    type_name = "Nesterov"


class AdaGradSolver(Solver):
    type_name = "AdaGrad"


class RMSPropSolver(Solver):
    type_name = "RMSProp"


class AdaDeltaSolver(Solver):
    type_name = "AdaDelta"


class AdamSolver(Solver):
    type_name = "Adam"


_BY_TYPE = {cls.type_name: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver,
                                           RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(filename: PathLike) -> Solver:
    """The solver the file's ``type`` names (Caffe's SolverRegistry)."""
    param = read_solver_param(filename)
    cls = _BY_TYPE.get(param.type)
    if cls is None:
        raise SolverError(f"unknown solver type '{param.type}'; known types: "
                          f"{', '.join(_BY_TYPE)}", file=filename)
    return cls(filename)
