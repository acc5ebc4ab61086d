"""The one exception family fcnwild raises for bad input.

Every message names where the problem is (file, line/column, layer or
iteration) and what was expected, so a user can fix the input without reading
a traceback from protobuf, h5py or torch internals.
"""
from __future__ import annotations

from os import PathLike


class FcnwildError(Exception):
    """Base class of every error fcnwild raises on bad input."""

    def __init__(self, message: str, *, file: str | PathLike | None = None,
                 line: int | None = None, column: int | None = None,
                 layer: str | None = None, iteration: int | None = None) -> None:
        self.file = None if file is None else str(file)
        self.line, self.column = line, column
        self.layer, self.iteration = layer, iteration
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            loc = self.file
            if self.line is not None:
                loc += f":{self.line}"
                if self.column is not None:
                    loc += f":{self.column}"
            where.append(loc)
        if self.layer is not None:
            where.append(f"layer '{self.layer}'")
        if self.iteration is not None:
            where.append(f"iteration {self.iteration}")
        return (", ".join(where) + ": " if where else "") + self.detail


class PrototxtError(FcnwildError):
    """A prototxt or binary NetParameter/SolverParameter that cannot be parsed or upgraded."""


class NetError(FcnwildError):
    """A net that cannot be built or run: unknown layer type, missing bottom, bad shapes."""


class WeightsError(FcnwildError):
    """A weights file (.caffemodel, .h5, torch state) that is unreadable or does not fit the net."""


class SolverError(FcnwildError):
    """A solver configuration or solver state that is invalid or does not fit the net."""


class DivergenceError(SolverError):
    """Training produced NaN/Inf in the loss or in the parameters."""


class DatasetError(FcnwildError):
    """A dataset root, image or label that is missing, unreadable or in the wrong layout."""


class UsageError(FcnwildError):
    """A command-line flag or an experiment setting that fcnwild cannot act on."""
