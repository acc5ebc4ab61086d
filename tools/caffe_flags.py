"""Caffe's command-line flags for the verbs that mirror ``caffe`` (train, test, time,
device_query), so that scripts shelling out to ``caffe`` work with the binary swapped.

Caffe parses its flags with gflags, which takes ``-flag V``, ``-flag=V``,
``--flag V`` and ``--flag=V`` alike; ``add_flag`` registers each Caffe flag under
those spellings (and a hyphenated one where Caffe's name has an underscore).
Device selection follows ``caffe``'s ``-gpu``: a comma-separated list of CUDA
device ids or ``all``; without ``-gpu`` the CPU.
"""
from __future__ import annotations

import argparse
import logging

import torch

from fcnwild.base.errors import UsageError

log = logging.getLogger("fcnwild")


def add_flag(parser: argparse._ActionsContainer, name: str, **kwargs) -> argparse.Action:
    """``--name``, ``-name`` (and ``--hyphen-name`` for an underscored Caffe name)."""
    spellings = [f"--{name}", f"-{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    return parser.add_argument(*spellings, dest=name, **kwargs)


def add_gpu_flag(parser: argparse.ArgumentParser, what: str) -> None:
    add_flag(parser, "gpu", metavar="IDS",
             help=f"CUDA device ids separated by ',', or 'all' (Caffe's -gpu); {what}")


def add_net_state_flags(parser: argparse.ArgumentParser, default_phase: str | None) -> None:
    """Caffe's -phase, -level and -stage (NetState filtering of the net's layers)."""
    if default_phase is not None:
        add_flag(parser, "phase", type=str.lower, choices=["train", "test"],
                 default=default_phase,
                 help=f"net phase, TRAIN or TEST (default {default_phase.upper()})")
    add_flag(parser, "level", type=int, default=None, help="net state level (default 0)")
    add_flag(parser, "stage", action="append", default=[],
             help="net state stages, separated by ',' (repeatable)")


def stages(args: argparse.Namespace) -> list[str]:
    """The -stage values: each may be a ','-separated list (Caffe splits on ',')."""
    return [stage for value in args.stage for stage in value.split(",") if stage]


def gpu_ids(spec: str | None) -> list[int]:
    """Caffe's get_gpus: '' or None -> none; 'all' -> every CUDA device; '0,1' -> [0, 1].
    Every id must name a CUDA device of this machine."""
    if not spec:
        return []
    if spec == "all":
        ids = list(range(torch.cuda.device_count() if torch.cuda.is_available() else 0))
    else:
        try:
            ids = [int(item) for item in spec.split(",")]
        except ValueError:
            raise UsageError(f"-gpu {spec}: expected device ids separated by ',' "
                             "(e.g. 0 or 0,1) or 'all'") from None
    if not torch.cuda.is_available() or not ids:
        why = "this torch build has no CUDA support" if torch.version.cuda is None else \
            "torch finds no CUDA device"
        raise UsageError(f"-gpu {spec}: no CUDA device is available ({why}); to run on "
                         "the CPU, leave out -gpu")
    count = torch.cuda.device_count()
    wrong = [i for i in ids if not 0 <= i < count]
    if wrong:
        raise UsageError(f"-gpu {spec}: no CUDA device {wrong[0]}; this machine has "
                         f"{count} (ids 0..{count - 1})")
    if len(set(ids)) != len(ids):
        raise UsageError(f"-gpu {spec}: a device is listed twice")
    return ids


def single_device(args: argparse.Namespace) -> str:
    """The torch device of a single-device verb (test, time): the first -gpu id, as
    ``caffe`` (which logs the ids it leaves unused), else --device, else the CPU."""
    gpus = gpu_ids(args.gpu)
    if gpus and args.device:
        raise UsageError("give -gpu or --device, not both")
    while len(gpus) > 1:
        log.info("Not using GPU #%d for single-GPU function", gpus.pop())
    if gpus:
        log.info("Use GPU with device ID %d", gpus[0])
        log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
        return f"cuda:{gpus[0]}"
    if not args.device or args.device == "cpu":
        log.info("Use CPU.")
    return args.device or "cpu"
