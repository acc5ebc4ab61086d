"""``fcnwild device_query -gpu N``: Caffe's ``caffe device_query``, a CUDA device's
properties in Caffe's wording, from ``torch.cuda.get_device_properties``.

CUDA's device properties that torch does not expose (memory pitch, block and grid
dimensions, constant memory, texture alignment, copy overlap, kernel timeout) are
left out rather than guessed.
"""
from __future__ import annotations

import argparse
import logging

import torch

from fcnwild.base.errors import UsageError
from fcnwild.tools.caffe_flags import add_gpu_flag, gpu_ids
from fcnwild.tools.progress import setup_logging

log = logging.getLogger("fcnwild")

# Caffe's label -> the torch property holding it (printed when this torch has it).
PROPERTIES = [
    ("Major revision number", "major"),
    ("Minor revision number", "minor"),
    ("Name", "name"),
    ("Total global memory", "total_memory"),
    ("Total shared memory per block", "shared_memory_per_block"),
    ("Total registers per block", "regs_per_block"),
    ("Warp size", "warp_size"),
    ("Maximum threads per block", "max_threads_per_block"),
    ("Clock rate", "clock_rate"),
    ("Number of multiprocessors", "multi_processor_count"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gpu_flag(parser, "each listed device is queried")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    if not args.gpu:
        raise UsageError("Need a device ID to query: give -gpu N (or -gpu all)")
    log.info("Querying GPUs %s", args.gpu)
    for device in gpu_ids(args.gpu):
        print(describe(device))
    return 0


def describe(device: int) -> str:
    """Caffe's DeviceQuery lines for one CUDA device."""
    props = torch.cuda.get_device_properties(device)
    lines = [f"{'Device id:':<31}{device}"]
    for label, attribute in PROPERTIES:
        value = getattr(props, attribute, None)
        if value is not None:
            lines.append(f"{label + ':':<31}{value}")
    return "\n".join(lines)
