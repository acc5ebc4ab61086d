"""The long fuzz run: at least 10,000 mutated inputs per file format fcnwild reads.

    python benchmarks/fuzz_formats.py [--count 10000] [--formats caffemodel,torch] [--seed 0]
                                      [--out DIR]

Seeds, mutators and the oracle are tests/fuzz_harness.py's (the same as the
short run in tests/test_fuzz_formats.py); hypothesis draws the mutations. Each
format runs in one worker process (one core: the machine stays usable), which
first reads every unmutated seed (so one-time start-up costs do not count as a
slow case) and then the mutated inputs, each under the harness's time limit
and address-space cap. The parent restarts a worker that dies on a signal
(a crash) or stops finishing cases for HANG_S seconds (a hang in C code, which
the per-case alarm cannot interrupt), and keeps the input that did it under
--out. Printed per format: cases, outcomes (valid / our error / FOREIGN
exception / timeout / crash / hang), the slowest case and the worker's peak
RSS (resource.getrusage).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
FORMATS = ["net_prototxt", "solver_prototxt", "caffemodel", "caffemodel_h5", "torch",
           "solverstate", "solverstate_h5"]
HANG_S = 120.0


def worker(name: str, count: int, seed: int, results: Path, current: Path) -> int:
    """Run ``count`` mutated inputs of one format; one JSON line per case to ``results``."""
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    sys.path.insert(0, str(TESTS))
    import fuzz_harness as harness
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz_{name}_"))
    fmt = harness.build_formats(workdir)[name]
    with open(results, "a", buffering=1) as out, harness.memory_cap():
        for target in fmt.targets:
            harness.run_case(target, target.seed)

        @hypothesis_seed(seed)
        @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(fmt.cases())
        def run(case):
            target, data = case
            current.write_bytes(data)
            result = harness.run_case(target, data)
            out.write(json.dumps({"outcome": result.outcome, "seconds": result.seconds,
                                  "target": target.name, "detail": result.detail[:200]}) + "\n")
        run()
        out.write(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
                  + "\n")
    return 0


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def run_format(name: str, count: int, seed: int, out_dir: Path) -> dict:
    results = out_dir / f"{name}.jsonl"
    current = out_dir / f"{name}.current"
    results.unlink(missing_ok=True)
    extra: Counter = Counter()
    attempt = 0
    start = time.perf_counter()
    while True:
        done = sum("outcome" in line for line in _lines(results)) + sum(extra.values())
        if done >= count:
            break
        process = subprocess.Popen([sys.executable, __file__, "--worker", name, "--count",
                                    str(count - done), "--seed", str(seed + attempt),
                                    "--results", str(results), "--current", str(current)])
        last_size, last_change = -1, time.monotonic()
        while process.poll() is None:
            size = results.stat().st_size if results.exists() else 0
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > HANG_S:
                process.kill()
                process.wait()
                extra["hang"] += 1
                current.replace(out_dir / f"{name}.hang{attempt}.bin")
                break
            time.sleep(1.0)
        else:
            if process.returncode != 0:
                extra["crash"] += 1
                if current.exists():
                    current.replace(out_dir / f"{name}.crash{attempt}.bin")
        attempt += 1
    lines = _lines(results)
    cases = [line for line in lines if "outcome" in line]
    slowest = max(cases, key=lambda c: c["seconds"])
    return {
        "format": name, "cases": len(cases) + sum(extra.values()),
        "outcomes": dict(Counter(c["outcome"] for c in cases) + extra),
        "slowest_s": round(slowest["seconds"], 4), "slowest_target": slowest["target"],
        "slowest_outcome": slowest["outcome"],
        "peak_rss_mb": round(max(line.get("peak_rss_kb", 0) for line in lines) / 1024, 1),
        "findings": sorted({f"{c['outcome']}: {c['detail']}" for c in cases
                            if c["outcome"] not in ("valid", "our error")})[:20],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutated inputs per format")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for results and findings")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--current", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.count, args.seed, Path(args.results),
                      Path(args.current))
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="fuzz_formats_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"results under {out_dir}", flush=True)
    failed = False
    for name in args.formats.split(","):
        summary = run_format(name, args.count, args.seed, out_dir)
        print(json.dumps(summary), flush=True)
        failed |= any(k not in ("valid", "our error") for k in summary["outcomes"])
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
