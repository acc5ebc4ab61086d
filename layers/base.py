"""The Layer base class: one Caffe layer = one torch module.

A layer is built from its ``LayerParameter`` (the prototxt data), knows how
many bottoms/tops it takes, creates its learnable blobs in Caffe's order
(``setup``), infers top shapes from bottom shapes (``reshape``, Caffe's
Reshape, also used to report shape errors at build time) and computes its tops
(``forward``). Backward is torch autograd unless a layer's Caffe backward
differs, in which case the layer uses its own ``torch.autograd.Function``.
The Net moves blobs between layers; a layer never reaches into another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError, NetError

Shape = tuple[int, ...]
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def find_input(path: str | Path, first_dir: Path | None, what: str, layer: str, *,
               folder: bool = False) -> Path:
    """An input file (or ``folder``) a layer names: a relative path is looked up in
    ``first_dir`` (the prototxt's folder, or a list file's), then in the working
    directory, where Caffe looks."""
    path = Path(path)
    candidates = [path] if path.is_absolute() else \
        [d / path for d in (first_dir, Path.cwd()) if d is not None]
    for candidate in candidates:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{what} not found (tried {tried})", file=path, layer=layer)


@dataclass
class LayerContext:
    """What a layer may know about the net it is built into."""
    phase: int = TRAIN
    source: str | None = None          # prototxt path, for error messages
    base_dir: Path | None = None       # where relative paths in layer params resolve first
    allow_python: bool = False         # Python layers run arbitrary code: opt-in only
    extras: dict = field(default_factory=dict)


class Layer(nn.Module):
    """Base class; subclasses are registered with ``@register("CaffeType")``."""

    type_name: ClassVar[str] = ""
    # Caffe's LossLayer: top 0 gets loss_weight 1 unless the prototxt says otherwise.
    is_loss: ClassVar[bool] = False
    # Computes in float32 even in a net running under bfloat16 autocast (losses always;
    # normalisations and metrics whose results reduced precision would distort).
    full_precision: ClassVar[bool] = False
    # (min, max) counts; max None = unbounded.
    num_bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    num_tops: ClassVar[tuple[int, int | None]] = (1, 1)
    # Bottom indices Caffe never back-propagates into (labels, reference shapes).
    no_grad_bottoms: ClassVar[tuple[int, ...]] = ()

    def __init__(self, param: caffe_pb2.LayerParameter, ctx: LayerContext | None = None) -> None:
        super().__init__()
        self.param = param
        self.name = param.name
        self.ctx = ctx or LayerContext()
        self.phase = self.ctx.phase
        self.blobs = nn.ParameterList()
        self._check_counts(len(param.bottom), len(param.top))

    # --- the three steps of a layer's life -------------------------------------------
    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        """Read parameters and create learnable blobs (Caffe's LayerSetUp)."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Top shapes for these bottom shapes; raise ``self.error`` when they do not fit."""
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    # --- helpers for subclasses ------------------------------------------------------
    def error(self, message: str) -> NetError:
        return NetError(message, layer=self.name, file=self.ctx.source)

    def add_blob(self, data: Tensor) -> None:
        """Append a learnable blob. Layers read blobs back through ``self.blobs[i]`` (never
        a cached attribute): the Net may replace a blob by a shared one."""
        self.blobs.append(nn.Parameter(data.to(torch.float32).contiguous()))

    def blob(self, index: int) -> Tensor | None:
        return self.blobs[index] if index < len(self.blobs) else None

    def _check_counts(self, n_bottom: int, n_top: int) -> None:
        for what, n, (lo, hi) in (("bottom", n_bottom, self.num_bottoms),
                                  ("top", n_top, self.num_tops)):
            if n < lo or (hi is not None and n > hi):
                want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
                raise self.error(f"{self.type_name} takes {want} {what} blob(s), got {n}")

    def extra_repr(self) -> str:
        return f"{self.type_name} {self.name!r}"
