"""``fcnwild train``: Caffe's ``caffe train`` (solver prototxt, finetune weights or resume).

Multi-process data-parallel training: start it under ``torchrun`` (e.g.
``torchrun --nproc-per-node 2 -m fcnwild.tools.cli train --solver S``); each
rank reads its own shard of every batch, diffs are averaged before each update
(Caffe's multi-GPU semantics: the effective batch is the sum over ranks).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from fcnwild.base.errors import SolverError
from fcnwild.nets.precision import PRECISIONS
from fcnwild.solvers import create_solver
from fcnwild.solvers.snapshot import latest_snapshot, remove_stale_temporaries
from fcnwild.tools.progress import iteration_progress, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solver", required=True, help="solver prototxt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="comma-separated weights files to finetune from "
                        "(copied into the train net in order)")
    source.add_argument("--snapshot", help="a .solverstate[.h5] to resume training from, or "
                        "'latest': the newest complete snapshot under the solver's "
                        "snapshot_prefix (training starts afresh when there is none)")
    parser.add_argument("--snapshot-fallback", action="store_true",
                        help="with --snapshot latest: when the newest snapshot is damaged, "
                        "resume from the newest complete one (default: stop with an error)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:<local rank> under torchrun with "
                        "CUDA, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what the train net computes in: fp32 (Caffe's; TF32 off), tf32 "
                        "(CUDA tensor cores; as fp32 elsewhere) or bf16 (autocast; weights, "
                        "diffs and losses stay float32). Default fp32")
    parser.add_argument("--allow-python", action="store_true",
                        help="allow Python layers (they run arbitrary code)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    rank, world, device = _distributed_setup(args.device)
    # Caffe logs from the root solver only; other ranks report warnings and errors.
    setup_logging(logging.INFO if rank == 0 else logging.WARNING)
    try:
        solver = create_solver(args.solver, allow_python=args.allow_python, rank=rank,
                               world_size=world, device=device, precision=args.precision)
        if args.weights:
            # Caffe's CopyLayers: into the train net and every test net (layers only a
            # test net has keep their own params).
            for path in args.weights.split(","):
                for net in [solver.net, *solver.test_nets]:
                    net.copy_from(path)
        resume = args.snapshot
        if resume == "latest":
            resume = _latest_snapshot(solver, args.snapshot_fallback)
        with iteration_progress(solver, disable=args.quiet or rank != 0):
            solver.solve(resume=resume)
        if rank == 0 and solver.last_snapshot:
            logging.getLogger("fcnwild").info("Optimization done; last snapshot %s",
                                              solver.last_snapshot[0])
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0


def _latest_snapshot(solver, fallback: bool) -> Path | None:
    """The newest complete snapshot of this solver's prefix, after clearing what killed
    snapshot writes left behind (on rank 0, which writes snapshots)."""
    log = logging.getLogger("fcnwild")
    prefix = solver.snapshot_prefix
    if solver.rank == 0:
        for path in remove_stale_temporaries(prefix):
            log.info("Removed %s, left by an interrupted snapshot write", path)
    found = latest_snapshot(prefix, fallback=fallback)
    if found is None:
        log.info("No snapshot under %s yet: training starts at iteration 0", prefix)
    return found


def _distributed_setup(device: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device or "cpu")
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or "").startswith("cuda") or (device is None and
                                                     torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    except (RuntimeError, ValueError) as err:
        raise SolverError(f"cannot start distributed training: {err}") from None
    chosen = torch.device(device or (f"cuda:{local_rank}" if use_cuda else "cpu"))
    return dist.get_rank(), dist.get_world_size(), chosen
