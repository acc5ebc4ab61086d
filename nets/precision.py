"""The arithmetic a net trains in: ``fp32`` (Caffe's: float32 throughout, TF32 off; the
reference mode every Caffe comparison holds in), ``tf32`` (CUDA matrix products and
convolutions on TF32 tensor cores, float32 storage) or ``bf16`` (autocast: convolutions
and matrix products in bfloat16, weights and diffs in float32; losses, softmax and
metrics in float32, see Net.forward_layer).

TF32 is a property of CUDA's tensor cores: on other devices ``tf32`` computes what
``fp32`` does. bfloat16 autocast also runs on the CPU (correct, and slow unless the
CPU has bfloat16 instructions), so the mode can be tested anywhere.
"""
from __future__ import annotations

import torch

from fcnwild.base.errors import FcnwildError

PRECISIONS = ("fp32", "tf32", "bf16")


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise FcnwildError(f"unknown precision {precision!r}; expected one of "
                           f"{', '.join(PRECISIONS)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes in, or None when the net runs without autocast."""
    return torch.bfloat16 if check(precision) == "bf16" else None


def configure(precision: str, device: torch.device | str) -> str:
    """Set torch's process-wide TF32 flags for ``precision`` (off unless ``tf32``: torch
    lets cuDNN use TF32 by default) and cuDNN's algorithm search for fixed shapes;
    returns a line saying what the net will compute in on ``device``."""
    check(precision)
    device = torch.device(device)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return {"fp32": "fp32: float32 throughout, TF32 off (Caffe's arithmetic)",
                "tf32": "tf32: CUDA matrix products and convolutions on TF32 tensor cores, "
                        "float32 storage",
                "bf16": "bf16: autocast to bfloat16 on CUDA; weights, diffs and losses in "
                        "float32"}[precision]
    return {"fp32": f"fp32: float32 throughout on {device.type} (Caffe's arithmetic)",
            "tf32": f"tf32 asked for, but TF32 exists only on CUDA tensor cores: on "
                    f"{device.type} this is float32 (as fp32)",
            "bf16": f"bf16: autocast to bfloat16 on {device.type}; weights, diffs and "
                    "losses in float32 (slow on a CPU without bfloat16 instructions)"}[precision]
