"""Running an experiment's stages for several seeds at once, one thread per stage, with
pinned convolution paths.

Every stage of every seed is a job; a stage waits for the stage it starts from (and a
seed's oracle for the seed's first stage, which generates the seed's benchmark). Jobs run
in parallel worker processes of one thread each, the longest remaining chain first, every
convolution on the path ``demo_conv_paths.json`` names (the fastest measured for the demo's
shapes; other shapes take the fixed rules) rather than the one timing picks on the day:
timings under a busy machine flip near-ties, and another path rounds differently. A
stage's numbers therefore depend on the seed and the processor only: not on the number of
cores, on which jobs ran beside it, or on the plan cache. Every seed writes under ``<out>/seed_<k>/`` and
resumes there (``AdaptationRun``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator

import torch

from fcnwild.data.datasets import open_dataset
from fcnwild.layers import conv_tuning
from fcnwild.tools.experiment.config import (
    PREVIOUS_STAGE,
    STAGE_TITLES,
    Experiment,
    stage_order,
)
from fcnwild.tools.experiment.run import AdaptationRun
from fcnwild.tools.progress import setup_logging

log = logging.getLogger("fcnwild.adapt")
ExperimentFactory = Callable[[int], Experiment]   # seed -> experiment; must pickle
Results = dict[str, dict]                         # stage -> its metrics
# An adversarial iteration forwards a source and a target batch twice and back once: about
# 2.7 supervised iterations (for ordering jobs only).
ADVERSARIAL_COST = 2.7


def seed_folder(out: str | os.PathLike, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def run_seeds(make_experiment: ExperimentFactory, seeds: list[int], out: str | os.PathLike,
              stages: tuple[str, ...], *, jobs: int | None = None, quiet: bool = False,
              on_done: Callable[[int, Results], None] | None = None) -> dict[int, Results]:
    """Every stage of every seed; ``on_done(seed, results)`` when a seed's stages are all
    done. ``jobs`` worker processes (default: one per core); with one, the stages run in
    this process, on one thread as well."""
    with job_conditions():
        return _run_jobs(make_experiment, seeds, out, stage_order(stages), jobs, quiet, on_done)


@contextlib.contextmanager
def job_conditions() -> Iterator[None]:
    """Torch on one thread with the pinned convolution paths meanwhile, as every job runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with conv_tuning.pinned(pinned_conv_paths()):
            yield
    finally:
        torch.set_num_threads(threads)


def pinned_conv_paths() -> dict[str, str]:
    return json.loads((Path(__file__).parent / "demo_conv_paths.json").read_text())["paths"]


def _run_jobs(make_experiment: ExperimentFactory, seeds: list[int], out: str | os.PathLike,
              stages: tuple[str, ...], jobs: int | None, quiet: bool,
              on_done: Callable[[int, Results], None] | None) -> dict[int, Results]:
    experiment = make_experiment(seeds[0])
    chain = [s for s in stages if s != "oracle"]
    needs = {s: PREVIOUS_STAGE[s] if s in PREVIOUS_STAGE and PREVIOUS_STAGE[s] in stages
             else (chain[0] if s == "oracle" and chain else None) for s in stages}
    cost = {s: experiment.settings[s].max_iter * (ADVERSARIAL_COST if s in ("ga", "ga_ca") else 1)
            for s in stages}
    # The longest chain of stages still to run after (and with) each stage goes first.
    remaining = {s: cost[s] + sum(cost[t] for t in chain[chain.index(s) + 1:])
                 if s in chain else cost[s] for s in stages}
    pending = sorted(((seed, s) for seed in seeds for s in stages),
                     key=lambda job: (-remaining[job[1]], seeds.index(job[0])))
    results: dict[int, Results] = {seed: {} for seed in seeds}

    def finish(seed: int, stage: str, result: dict) -> None:
        results[seed][stage] = result
        if len(results[seed]) == len(stages) and on_done is not None:
            on_done(seed, {s: results[seed][s] for s in stages})

    def ready() -> list[tuple[int, str]]:
        return [(seed, s) for seed, s in pending if needs[s] is None or needs[s] in results[seed]]

    workers = max(1, min(jobs or os.cpu_count() or 1, len(pending)))
    if workers == 1:
        _log_jobs(quiet)
        try:
            while pending:
                seed, stage = ready()[0]
                pending.remove((seed, stage))
                finish(seed, stage, _run_stage(make_experiment, seed, stage, out,
                                           needs[stage] is None))
        finally:
            _prefix.seed = None
    else:
        context = multiprocessing.get_context("spawn")   # fork would copy torch's thread pools
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(quiet,)) as pool:
            running: dict[Future, tuple[int, str]] = {}
            try:
                while pending or running:
                    for job in ready()[:workers - len(running)]:
                        pending.remove(job)
                        running[pool.submit(_run_stage, make_experiment, *job, out,
                                            needs[job[1]] is None)] = job
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        seed, stage = running.pop(future)
                        finish(seed, stage, future.result())
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    return {seed: {s: results[seed][s] for s in stages} for seed in seeds}


class _SeedPrefix(logging.Filter):
    """Prefixes the records of the job a worker runs with its seed."""
    seed: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.seed is not None and not getattr(record, "_seed_prefixed", False):
            record.msg = f"seed {self.seed}: {record.msg}"
            record._seed_prefixed = True
        return True


_prefix = _SeedPrefix()


_worker_conditions = contextlib.ExitStack()


def _init_worker(quiet: bool) -> None:
    """A worker process: ``job_conditions`` for its whole life."""
    _worker_conditions.enter_context(job_conditions())
    _log_jobs(quiet)


def _log_jobs(quiet: bool) -> None:
    setup_logging(logging.WARNING if quiet else logging.INFO)
    for handler in logging.getLogger("fcnwild").handlers:
        if _prefix not in handler.filters:
            handler.addFilter(_prefix)


def _run_stage(make_experiment: ExperimentFactory, seed: int, stage: str,
               out: str | os.PathLike, first: bool) -> dict:
    """One stage of one seed; a ``first`` stage (one that waits on no other) opens,
    and so generates the first time, every dataset the seed's stages read."""
    _prefix.seed = seed
    experiment = make_experiment(seed)
    if first:
        for spec, split in experiment.datasets():
            open_dataset(spec, split)
    return AdaptationRun(experiment, seed_folder(out, seed), _log_quarters).run_stage(stage)


def _log_quarters(stage: str, iteration: int, total: int,
                  terms: dict[str, float] | None = None) -> None:
    """A log line at each quarter of a stage (bars from parallel workers would interleave)."""
    if total and iteration and iteration * 4 // total != (iteration - 1) * 4 // total:
        shown = ", ".join(f"{name} {value:.3g}" for name, value in (terms or {}).items())
        log.info("%s: iteration %d/%d%s", STAGE_TITLES[stage], iteration, total,
                 f" ({shown})" if shown else "")
