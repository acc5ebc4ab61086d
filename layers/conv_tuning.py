"""Choosing among a convolution's kernels by measuring them on the machine at hand.

conv_ops can compute each GEMM-shaped operation of a convolution (forward, input
gradient, weight gradient) in more than one way. Which way is fastest depends on the
CPU (vector width, caches, memory bandwidth), on the oneDNN and BLAS builds inside torch
and on the thread count, so it is not written down for one machine: the first time an
operation of a given shape is met, its candidate kernels are timed, and the winner is
remembered in ``<cache root>/conv_plans/<machine>.json`` (cache root: ``$FCNWILD_CACHE``,
else ``~/.cache/fcnwild``). ``<machine>`` is a digest of the CPU model, the instruction
set torch dispatches to, the torch version and the number of threads; each of these
changes the answer.

``FCNWILD_CONV_TUNING`` selects the behaviour: ``auto`` (the default: measure once, then
reuse), ``off`` (conv_ops' fixed rules; nothing is timed, read or written; the test suite
runs this way) or ``recalibrate`` (measure every shape again once in this process and
overwrite what the cache held). ``override`` does the same for a block of code.

A missing, unreadable, corrupt or unwritable cache never stops a run: unreadable
contents are measured again, and plans that cannot be written stay in memory. A choice
measured while the load average exceeded ``BUSY`` per CPU is measured again by a later
process that finds the machine less than half as busy.

How a choice is measured:

* every candidate first runs on a probe, a copy of the problem with ``PROBE_DIVISOR``
  times fewer channels on either side (1/64 of the work), made by conv_ops; candidates
  slower than ``PROBE_MARGIN`` times the fastest probe are dropped, so that a kernel
  whose cost is out of proportion is not run at full size (a kernel that is only slow
  beyond some size escapes the probe: conv_ops leaves the one it knows out of the
  candidates);
* the remaining candidates run at full size once to warm up, then ``ROUNDS`` times,
  interleaved round by round so that a burst of load from other processes falls on all
  of them alike; the shortest time of each decides.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from fcnwild.base.atomic import atomic_write
from fcnwild.base.cache import cache_root

ENV = "FCNWILD_CONV_TUNING"
MODES = ("auto", "off", "recalibrate")
FORMAT = 1
PROBE_DIVISOR = 8
PROBE_MARGIN = 4.0
ROUNDS = 2
BUSY = 1.5          # load average per CPU above which a measurement is taken again later

Trial = Callable[[], object]
log = logging.getLogger("fcnwild.conv")


def mode() -> str:
    """The tuning mode in force: ``override``'s, else ``$FCNWILD_CONV_TUNING``, else auto."""
    if _override:
        return _override[-1]
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}; expected one of {', '.join(MODES)}")
    return value


_override: list[str] = []


@contextlib.contextmanager
def override(new_mode: str) -> Iterator[None]:
    """Run a block under another tuning mode (``auto``, ``off`` or ``recalibrate``)."""
    if new_mode not in MODES:
        raise ValueError(f"unknown tuning mode {new_mode!r}; expected one of {', '.join(MODES)}")
    _override.append(new_mode)
    try:
        yield
    finally:
        _override.pop()


def machine() -> dict[str, object]:
    """What the cached choices depend on besides the problem's shape."""
    return {"cpu": _cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name with its family/model/stepping numbers (a VM may show only
    a generic name such as "AMD EPYC", which covers generations that behave differently)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break                       # the first processor is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    if "model name" in fields:
        numbers = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
        return f"{fields['model name']} ({numbers})"
    return platform.processor() or platform.machine() or "unknown"


class PlanCache:
    """The measured choices of one machine, as stored in one JSON file."""

    def __init__(self, path: Path, description: dict[str, object]):
        self.path, self.description = path, description
        self.entries = self._read()
        self._write_failed = False

    def _read(self) -> dict[str, dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as err:
            warnings.warn(f"{self.path}: unreadable convolution plan cache ({err}); "
                          "measuring again", stacklevel=4)
            return {}
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT or not isinstance(data.get("plans"), dict):
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            return {key: entry for key, entry in data["plans"].items()
                    if isinstance(entry, dict) and isinstance(entry.get("path"), str)}
        except (ValueError, AttributeError) as err:
            warnings.warn(f"{self.path}: corrupt convolution plan cache ({err}); measuring "
                          "again", stacklevel=4)
            return {}

    def save(self) -> None:
        """Merge with what other processes may have written meanwhile, then write atomically."""
        if self._write_failed:
            return
        merged = {**self._read_quietly(), **self.entries}
        data = {"format": FORMAT, "machine": self.description, "plans": merged}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
        except OSError as err:
            self._write_failed = True
            warnings.warn(f"{self.path}: cannot write the convolution plan cache ({err}); "
                          "this process keeps its measurements in memory", stacklevel=4)

    def _read_quietly(self) -> dict[str, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._read()


# Keyed by what can change within a process (the thread count, the cache folder): the rest of
# the machine's description is fixed, and this lookup runs for every convolution.
_caches: dict[tuple, PlanCache] = {}
_remeasured: set[tuple[Path, str]] = set()      # keys measured by this process


def plan_cache() -> PlanCache:
    """The cache of this machine, thread count and torch build (read once per process)."""
    lookup = (torch.get_num_threads(), os.environ.get("FCNWILD_CACHE"), os.environ.get("HOME"))
    cache = _caches.get(lookup)
    if cache is None:
        description = machine()
        digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
        cache = _caches[lookup] = PlanCache(cache_root() / "conv_plans" / f"{digest}.json",
                                            description)
    return cache


_pinned: dict[str, str] | None = None


@contextlib.contextmanager
def pinned(paths: Mapping[str, str]) -> Iterator[None]:
    """Run a block with the paths ``paths`` names (plan key -> path) and the fixed rules
    for every other operation: no timing decides a path, so the arithmetic, and with it a
    training's numbers, repeat exactly on a processor."""
    global _pinned
    previous, _pinned = _pinned, dict(paths)
    try:
        yield
    finally:
        _pinned = previous


def choose(key: str, candidates: Sequence[str], default: str,
           full: Callable[[str], Trial], probe: Callable[[str], Trial] | None) -> str:
    """The fastest of ``candidates`` for the operation named by ``key``.

    ``full(path)`` and ``probe(path)`` return zero-argument callables that run the
    operation with that path at full size and on the reduced probe problem (``probe`` is
    None when the problem is already that small). ``default`` is what conv_ops' fixed
    rules pick; it is the answer when tuning is off or nothing else can be measured.
    """
    candidates = list(dict.fromkeys([default, *candidates]))
    if _pinned is not None:
        path = _pinned.get(key, default)
        return path if path in candidates else default
    current = mode()
    if current == "off" or len(candidates) == 1:
        return default
    cache = plan_cache()
    entry = cache.entries.get(key)
    measured_here = (cache.path, key) in _remeasured
    if (entry is not None and entry["path"] in candidates
            and (measured_here or (current != "recalibrate" and not _quieter_now(entry)))):
        return entry["path"]
    if not _remeasured:
        log.info("measuring convolution kernels for shapes met the first time on this "
                 "machine; the choices are kept in %s (%s=recalibrate measures again)",
                 cache.path, ENV)
    entry = measure(candidates, default, full, probe)
    log.debug("convolution plan %s: %s (%s)", key, entry["path"],
             ", ".join(f"{p} {ms:.1f} ms" for p, ms in entry["ms"].items()))
    cache.entries[key] = entry
    _remeasured.add((cache.path, key))
    cache.save()
    return entry["path"]


def _quieter_now(entry: dict) -> bool:
    """Whether a choice measured while other processes crowded the CPU can now be measured
    on a machine less than half as busy (timings under load favour other kernels than
    timings on a quiet machine: memory-bound transforms suffer most)."""
    cpus = os.cpu_count() or 1
    then = entry.get("load", 0) / cpus
    return then > BUSY and os.getloadavg()[0] / cpus < then / 2


def measure(candidates: Sequence[str], default: str, full: Callable[[str], Trial],
            probe: Callable[[str], Trial] | None) -> dict:
    """Time the candidates as the module docstring describes; returns the cache entry."""
    entry: dict = {"load": round(os.getloadavg()[0], 2)}
    kept = list(candidates)
    if probe is not None:
        probe_times = _time_all({path: probe(path) for path in kept}, rounds=ROUNDS)
        entry["probe_ms"] = {p: round(t * 1e3, 3) for p, t in probe_times.items()}
        best = min(probe_times.values(), default=None)
        kept = [p for p in kept if p == default or
                (p in probe_times and probe_times[p] <= PROBE_MARGIN * best)]
    times = _time_all({path: full(path) for path in kept}, rounds=ROUNDS)
    entry["ms"] = {p: round(t * 1e3, 3) for p, t in times.items()}
    entry["path"] = min(times, key=times.get) if times else default
    return entry


def _time_all(trials: dict[str, Trial], rounds: int) -> dict[str, float]:
    """Warm each trial up once (dropping any that fails), then the best of ``rounds``
    interleaved runs of each."""
    working = {}
    for path, trial in trials.items():
        try:
            trial()
        except (RuntimeError, MemoryError) as err:
            log.info("convolution kernel %s cannot run here: %s", path, err)
            continue
        working[path] = trial
    best = {path: float("inf") for path in working}
    for _ in range(rounds):
        for path, trial in working.items():
            start = time.perf_counter()
            trial()
            best[path] = min(best[path], time.perf_counter() - start)
    return best
