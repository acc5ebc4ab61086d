"""Time CCNN's constrained softmax, batched, on front-end sized score maps.

The FCNs-in-the-Wild front end maps a 500x500 crop to a 63x63 score map with
19 Cityscapes classes. Each image gets the paper's size constraints (lower bound
soft, upper bound hard) on its present classes: K = 2 * present rows. The scores
favour one class per image strongly enough that its upper bound and some lower
bounds bind, so the solver does real work.

    python benchmarks/bench_constraint_solver.py [--threads 1] [--repeat 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch

from fcnwild.layers.constraint_solver import (ConstraintSet, size_constraints,
                                              solve_constrained_softmax)

C, H, W = 19, 63, 63


def make_batch(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, C, H, W, generator=g) * 2.0
    dominant = torch.randint(0, C, (B,), generator=g)
    scores[torch.arange(B), dominant] += 3.0
    present = torch.rand(B, C, generator=g) < 0.5
    present[torch.arange(B), dominant] = True
    lower = torch.full((C,), 0.04)
    upper = torch.full((C,), 0.35)
    return scores, size_constraints(present, lower, upper)


def best_time(fn, repeat: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{where}, {args.threads} CPU thread(s), C={C}, map {H}x{W} (N={H * W}), "
          f"best of {args.repeat}")
    print(f"{'B':>2} {'rows/img':>8} {'iters (max, per image)':<34} {'batched ms':>10} "
          f"{'ms/img':>7} {'one-by-one ms':>13}")
    for B in range(1, 9):
        scores, cs = make_batch(B)
        scores, cs = scores.to(device), cs.to(device)
        solution = solve_constrained_softmax(scores, cs)
        batched = best_time(lambda: solve_constrained_softmax(scores, cs), args.repeat, device)
        singles = [(scores[j:j + 1],
                    ConstraintSet(cs.A[j:j + 1], cs.b[j:j + 1], cs.slack[j:j + 1],
                                  cs.active[j:j + 1], cs.absent[j:j + 1]))
                   for j in range(B)]
        one_by_one = best_time(lambda: [solve_constrained_softmax(f, c) for f, c in singles],
                               args.repeat, device)
        iters = solution.iterations.tolist()
        rows = cs.active.sum(1).float().mean().item()
        print(f"{B:>2} {rows:>8.1f} {max(iters):>4} {str(iters):<29} {batched * 1e3:>10.1f} "
              f"{batched * 1e3 / B:>7.1f} {one_by_one * 1e3:>13.1f}")


if __name__ == "__main__":
    main()
