"""``fcnwild stats``: per-class size statistics (alpha, delta, gamma) of a labelled source set.

Writes the JSON file the constrained MIL loss reads (``load_class_stats``).
"""
from __future__ import annotations

import argparse
import os
import sys

from fcnwild.data.base import skipped_report
from fcnwild.data.class_stats import compute_class_stats, save_class_stats
from fcnwild.data.datasets import open_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="SPEC",
                        help="FAMILY:ROOT[?key=value&...], e.g. gta5:/data/gta5")
    parser.add_argument("--split", default=None, help="dataset split (default: the whole set)")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads decoding label maps")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable or truncated label, or label with ids "
                             "outside the label space (default: leave such labels out and report them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset, args.split)
    print(dataset, file=sys.stderr)
    stats = compute_class_stats(dataset, workers=args.workers, progress=not args.no_progress,
                                strict=args.strict)
    if stats.skipped:
        print(skipped_report(stats.skipped), file=sys.stderr)
    save_class_stats(stats, args.out)
    print(stats.table())
    print(f"written to {args.out}")
    return 0
