"""Running an experiment's stages for several seeds at once, one thread per stage chain.

Each seed's source-only -> GA -> GA+CA chain is one job and its oracle another (it depends
on nothing); jobs run in parallel worker processes of one thread each. A stage's numbers
therefore depend on the seed and the processor but not on the number of cores or on which
other jobs ran beside it. Every seed writes under ``<out>/seed_<k>/`` and resumes there
(``AdaptationRun``).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import torch

from fcnwild.data.datasets import open_dataset
from fcnwild.tools.experiment.config import STAGE_TITLES, Experiment, stage_order
from fcnwild.tools.experiment.run import AdaptationRun
from fcnwild.tools.progress import setup_logging

log = logging.getLogger("fcnwild.adapt")
ExperimentFactory = Callable[[int], Experiment]   # seed -> experiment; must pickle
Results = dict[str, dict]                         # stage -> its metrics


def seed_folder(out: str | os.PathLike, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def run_seeds(make_experiment: ExperimentFactory, seeds: list[int], out: str | os.PathLike,
              stages: tuple[str, ...], *, jobs: int | None = None, quiet: bool = False,
              on_done: Callable[[int, Results], None] | None = None) -> dict[int, Results]:
    """Every stage of every seed; ``on_done(seed, results)`` as each job ends. ``jobs``
    worker processes (default: one per core, at most one per job); with one, the jobs run
    in this process, on one thread as well."""
    stages = stage_order(stages)
    chain = tuple(s for s in stages if s != "oracle")
    units = [(seed, chain) for seed in seeds if chain] + \
            [(seed, ("oracle",)) for seed in seeds if "oracle" in stages]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(units)))
    results: dict[int, Results] = {seed: {} for seed in seeds}

    def collect(seed: int, done: Results) -> None:
        results[seed].update(done)
        if on_done is not None:
            on_done(seed, done)

    if jobs == 1:
        _init_worker(quiet)
        for seed in seeds:
            _prepare(make_experiment, seed)
        for seed, unit in units:
            collect(seed, _run_unit(make_experiment, seed, unit, out))
    else:
        context = multiprocessing.get_context("spawn")   # fork would copy torch's thread pools
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                 initargs=(quiet,)) as pool:
            # Each benchmark is generated once before two jobs could both find it missing.
            _drain([pool.submit(_prepare, make_experiment, seed) for seed in seeds])
            pending = {pool.submit(_run_unit, make_experiment, seed, unit, out): seed
                       for seed, unit in units}
            _drain(list(pending), lambda f: collect(pending[f], f.result()))
    return {seed: {stage: results[seed][stage] for stage in stages} for seed in seeds}


def _drain(futures: list[Future], each: Callable[[Future], None] | None = None) -> None:
    """Wait for ``futures``, handing each to ``each`` as it ends; the first failure cancels
    what has not started and is raised."""
    remaining = set(futures)
    try:
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                if each is not None:
                    each(future)
    except BaseException:
        for future in remaining:
            future.cancel()
        raise


class _SeedPrefix(logging.Filter):
    """Prefixes the records of the job a worker runs with its seed."""
    seed: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.seed is not None and not getattr(record, "_seed_prefixed", False):
            record.msg = f"seed {self.seed}: {record.msg}"
            record._seed_prefixed = True
        return True


_prefix = _SeedPrefix()


def _init_worker(quiet: bool) -> None:
    torch.set_num_threads(1)
    setup_logging(logging.WARNING if quiet else logging.INFO)
    for handler in logging.getLogger("fcnwild").handlers:
        if _prefix not in handler.filters:
            handler.addFilter(_prefix)


def _prepare(make_experiment: ExperimentFactory, seed: int) -> None:
    """Opens (and so generates, the first time) every dataset a seed's stages read."""
    experiment = make_experiment(seed)
    _prefix.seed = seed
    for spec, split in experiment.datasets():
        open_dataset(spec, split)


def _run_unit(make_experiment: ExperimentFactory, seed: int, stages: tuple[str, ...],
              out: str | os.PathLike) -> Results:
    _prefix.seed = seed
    run = AdaptationRun(make_experiment(seed), seed_folder(out, seed), _log_quarters)
    return {stage: run.run_stage(stage) for stage in stages}


def _log_quarters(stage: str, iteration: int, total: int,
                  terms: dict[str, float] | None = None) -> None:
    """A log line at each quarter of a stage (bars from parallel workers would interleave)."""
    if total and iteration and iteration * 4 // total != (iteration - 1) * 4 // total:
        shown = ", ".join(f"{name} {value:.3g}" for name, value in (terms or {}).items())
        log.info("%s: iteration %d/%d%s", STAGE_TITLES[stage], iteration, total,
                 f" ({shown})" if shown else "")
