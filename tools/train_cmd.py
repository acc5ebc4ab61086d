"""``fcnwild train``: Caffe's ``caffe train`` (solver prototxt, finetune weights or resume).

Caffe's flags work in its gflags spellings too (``-solver S -weights W -gpu 0``).
Devices as in ``caffe train``: ``-gpu 0`` trains on that CUDA device; ``-gpu 0,1`` or
``-gpu all`` starts one process per device, data-parallel (each rank reads its own
shard of every batch, diffs are averaged before each update: the effective batch is
the sum over the devices, Caffe's multi-GPU semantics). Without ``-gpu`` a solver
with ``solver_mode: GPU`` trains on its ``device_id`` when CUDA is there, on the CPU
(with a warning) otherwise. The ranks may also be started by ``torchrun``
(``torchrun --nproc-per-node 2 -m fcnwild.tools.cli train --solver S``: gloo on the
CPU, nccl on GPUs).

SIGINT and SIGHUP act as in ``caffe train`` (``-sigint_effect``, ``-sighup_effect``):
by default Ctrl-C stops after the current iteration, with the final snapshot, and
SIGHUP writes a snapshot and training goes on.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import FcnwildError, SolverError, UsageError
from fcnwild.nets.precision import PRECISIONS
from fcnwild.nets.prototxt import read_solver_param
from fcnwild.solvers import create_solver
from fcnwild.solvers.snapshot import latest_snapshot, remove_stale_temporaries
from fcnwild.tools.caffe_flags import add_flag, add_gpu_flag, add_net_state_flags, gpu_ids, \
    stages
from fcnwild.tools.progress import iteration_progress, setup_logging
from fcnwild.tools.signals import EFFECTS, SignalHandler

log = logging.getLogger("fcnwild")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "solver", required=True, help="solver prototxt")
    source = parser.add_mutually_exclusive_group()
    add_flag(source, "weights", help="comma-separated weights files to finetune from "
             "(copied into the train net and the test nets in order)")
    add_flag(source, "snapshot", help="a .solverstate[.h5] to resume training from, or "
             "'latest': the newest complete snapshot under the solver's snapshot_prefix "
             "(training starts afresh when there is none)")
    parser.add_argument("--snapshot-fallback", action="store_true",
                        help="with --snapshot latest: when the newest snapshot is damaged, "
                        "resume from the newest complete one (default: stop with an error)")
    add_gpu_flag(parser, "several ids train data-parallel, one process per device "
                 "(default: the solver's device_id when its solver_mode is GPU and CUDA is "
                 "available, else the CPU)")
    add_net_state_flags(parser, default_phase=None)
    add_flag(parser, "sigint_effect", choices=EFFECTS, default="stop", metavar="ACTION",
             help="what SIGINT (Ctrl-C) does: stop after the current iteration (with the "
             "final snapshot), snapshot and go on, or nothing (default: stop)")
    add_flag(parser, "sighup_effect", choices=EFFECTS, default="snapshot", metavar="ACTION",
             help="what SIGHUP does: stop, snapshot or none (default: snapshot)")
    parser.add_argument("--device", default=None,
                        help="torch device instead of -gpu (default: cuda:<local rank> under "
                        "torchrun with CUDA, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what the train net computes in: fp32 (Caffe's; TF32 off), tf32 "
                        "(CUDA tensor cores; as fp32 elsewhere) or bf16 (autocast; weights, "
                        "diffs and losses stay float32). Default fp32")
    parser.add_argument("--allow-python", action="store_true",
                        help="allow Python layers (they run arbitrary code)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    setup_logging(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    devices = _devices(args)
    if len(devices) > 1:
        return _launch_ranks(args, devices)
    return _train(args, devices[0])


def _devices(args: argparse.Namespace) -> list[str | None]:
    """One torch device per process to start (None: torchrun's rank picks its own)."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.gpu:
        if args.device:
            raise UsageError("give -gpu or --device, not both")
        if under_torchrun:
            raise UsageError("under torchrun every process takes cuda:<local rank>; leave "
                             "out -gpu")
        return _cuda_devices(gpu_ids(args.gpu))
    if args.device or under_torchrun:
        return [args.device]
    param = read_solver_param(args.solver)
    if param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if torch.cuda.is_available():
            if param.device_id >= torch.cuda.device_count():
                raise UsageError(f"the solver's device_id {param.device_id} names no CUDA "
                                 f"device; this machine has {torch.cuda.device_count()}")
            return _cuda_devices([param.device_id])
        if param.HasField("solver_mode"):     # GPU is also the default, never a request
            log.warning("The solver asks for solver_mode: GPU, but no CUDA device is "
                        "available: training on the CPU")
    log.info("Use CPU.")
    return ["cpu"]


def _cuda_devices(ids: list[int]) -> list[str | None]:
    log.info("Using GPUs %s", ", ".join(str(i) for i in ids))
    for i in ids:
        log.info("GPU %d: %s", i, torch.cuda.get_device_name(i))
    return [f"cuda:{i}" for i in ids]


def _train(args: argparse.Namespace, device: str | None) -> int:
    rank, world, device = _distributed_setup(device)
    # Caffe logs from the root solver only; other ranks report warnings and errors.
    setup_logging(logging.INFO if rank == 0 else logging.WARNING)
    try:
        # Installed before the solver is built, as in caffe train: a signal while the nets
        # are built is answered after the first iteration.
        with SignalHandler(args.sigint_effect, args.sighup_effect) as signals:
            solver = create_solver(args.solver, allow_python=args.allow_python, rank=rank,
                                   world_size=world, device=device,
                                   train_state=_train_state(args), precision=args.precision)
            solver.action_request = signals.check
            if args.weights:
                # Caffe's CopyLayers: into the train net and every test net (layers only a
                # test net has keep their own params).
                for path in args.weights.split(","):
                    log.info("Finetuning from %s", path)
                    for net in [solver.net, *solver.test_nets]:
                        net.copy_from(path)
            resume = args.snapshot
            if resume == "latest":
                resume = _latest_snapshot(solver, args.snapshot_fallback)
            with iteration_progress(solver, disable=args.quiet or rank != 0):
                solver.solve(resume=resume)
            if rank == 0 and solver.last_snapshot:
                log.info("Optimization done; last snapshot %s", solver.last_snapshot[0])
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0


def _train_state(args: argparse.Namespace) -> caffe_pb2.NetState:
    """What ``caffe train`` writes into the solver's train_state: the level -level (0 when
    not given, whatever the solver file says) and the -stage stages added."""
    return caffe_pb2.NetState(level=args.level or 0, stage=stages(args))


def _launch_ranks(args: argparse.Namespace, devices: list[str | None]) -> int:
    """Train with one process per device (rank i on devices[i]); returns the exit status.
    SIGINT and SIGHUP sent to this process go to rank 0, whose solver decides for all."""
    import torch.multiprocessing as mp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.start_processes(_rank_main, args=(args, devices, port), nprocs=len(devices),
                                 join=False, start_method="spawn")

    def forward(signum, frame):
        os.kill(context.processes[0].pid, signum)
    forwarded = [s for s in (signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as err:
        # A negative code is the signal that ended the rank: the shell's 128 + signal.
        return err.exit_code if err.exit_code > 0 else 128 - err.exit_code
    except mp.ProcessRaisedException as err:
        print(f"rank {err.error_index} failed:{err}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _rank_main(index: int, args: argparse.Namespace, devices: list[str | None],
               port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index),
                      LOCAL_RANK=str(index), WORLD_SIZE=str(len(devices)))
    try:
        _train(args, devices[index])
    except FcnwildError as err:
        print(f"rank {index}: error: {err}", file=sys.stderr)
        sys.exit(2)


def _latest_snapshot(solver, fallback: bool) -> Path | None:
    """The newest complete snapshot of this solver's prefix, after clearing what killed
    snapshot writes left behind (on rank 0, which writes snapshots)."""
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
    chosen = torch.device(device or (f"cuda:{local_rank}" if use_cuda else "cpu"))
    if use_cuda:
        torch.cuda.set_device(chosen)
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    except (RuntimeError, ValueError) as err:
        raise SolverError(f"cannot start distributed training: {err}") from None
    return dist.get_rank(), dist.get_world_size(), chosen
