"""Caffe's axis conventions: canonical (negative-from-the-end) axes and counts.

Every message names the layer through the caller's ``error`` factory
(``Layer.error``), so a bad axis in a prototxt points at its layer.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from fcnwild.base.errors import NetError

Shape = tuple[int, ...]
ErrorFactory = Callable[[str], NetError]


def canonical_axis(axis: int, num_axes: int, error: ErrorFactory, what: str = "axis") -> int:
    """Blob::CanonicalAxisIndex: ``-num_axes <= axis < num_axes``, negatives count from the end."""
    if not -num_axes <= axis < num_axes:
        raise error(f"{what} {axis} is out of range for a {num_axes}-axis blob "
                    f"(expected {-num_axes} <= {what} < {num_axes})")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Blob::count(start, end): product of ``shape[start:end]`` (1 for an empty range)."""
    return math.prod(shape[start:end])


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
