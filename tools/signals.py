"""Caffe's SignalHandler for ``fcnwild train``: SIGINT and SIGHUP become solver requests.

As in ``caffe train``, a signal only raises a flag; the solver asks after every
iteration (and before every test iteration) and then snapshots or stops
(``-sigint_effect``, default stop; ``-sighup_effect``, default snapshot; ``none``
ignores the signal). A pending SIGHUP is answered before a pending SIGINT.
"""
from __future__ import annotations

import signal
from types import FrameType

from fcnwild.solvers.solver import SolverAction

EFFECTS = [action.value for action in SolverAction]


class SignalHandler:
    """``with SignalHandler("stop", "snapshot") as handler: solver.action_request =
    handler.check`` (the previous handlers come back on exit)."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        # In the order check() answers them; Windows has no SIGHUP.
        self.effects: dict[int, SolverAction] = {}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = SolverAction(sighup_effect)
        self.effects[signal.SIGINT] = SolverAction(sigint_effect)
        self._received = {signum: False for signum in self.effects}
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalHandler":
        for signum in self.effects:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received[signum] = True

    def check(self) -> SolverAction:
        """The action a signal received since the last call asks for (once per signal)."""
        for signum in self.effects:
            if self._received[signum]:
                self._received[signum] = False
                return self.effects[signum]
        return SolverAction.NONE
