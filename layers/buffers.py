"""Memory handed from one iteration to the next.

Caffe allocates every blob (data and diff) and every param diff once and overwrites
them each iteration. Here each pass computes new tensors; the largest of them (fc6's
weight diff, 411 MB at the front-end's size; conv1's maps and their diffs, 63 MB each)
would need fresh blocks every iteration, and with freed memory kept in the process
(tools/allocator.py) a heap that keeps freeing and re-allocating blocks of nearby sizes
fragments and grows step after step. So the Net parks a tensor it is about to replace
on the tensor the replacement is computed for, under a role: a param's old diff on the
param (``DIFF``), a bottom's old diff on the bottom (``DIFF``), a top's old data on the
layer's matching bottom (``OUTPUT``). A kernel computing the replacement writes into the
parked tensor instead of allocating; what no kernel takes is let go after the layer ran.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

DIFF = "_fcnwild_parked_diff"          # memory for the owner's next gradient
OUTPUT = "_fcnwild_parked_output"      # memory for the output computed from the owner


def park(owner: Tensor, tensor: Tensor | None, role: str = DIFF) -> None:
    """Offer ``tensor`` (which its holder no longer needs) as memory for what ``role``
    names; None leaves what is parked already."""
    if tensor is not None:
        # Without its history: a tensor the kernel hands back must be autograd's only
        # reference to it, or autograd copies it instead of keeping it as the gradient.
        setattr(owner, role, tensor.detach())


def take(owner: Tensor | None, shape: Sequence[int], like: Tensor,
         memory_format: torch.memory_format = torch.contiguous_format,
         role: str = DIFF) -> Tensor | None:
    """The tensor parked on ``owner`` under ``role`` if it fits (shape, dtype, device,
    dense in ``memory_format``), else None; either way nothing stays parked there."""
    parked = getattr(owner, role, None) if owner is not None else None
    if parked is None:
        return None
    delattr(owner, role)
    if (tuple(parked.shape) == tuple(shape) and parked.dtype == like.dtype
            and parked.device == like.device
            and parked.is_contiguous(memory_format=memory_format)):
        return parked
    return None


def discard(owner: Tensor, role: str = DIFF) -> None:
    """Let go of what is parked on ``owner`` under ``role``."""
    if hasattr(owner, role):
        delattr(owner, role)
