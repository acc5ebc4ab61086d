"""Run fcnwild verbs in this (new) process: ``python solver_process.py VERB ARGS...``.

Several runs may follow one another, separated by a lone ``;`` argument; each
builds its own objects, none sees what the test process had in memory. Works
under torchrun too. The verb modules are called directly, as ``fcnwild <verb>``
would, so the test does not depend on every verb of the CLI being importable.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import sys


def main(argv: list[str]) -> int:
    runs = [list(group) for is_separator, group in
            itertools.groupby(argv, lambda a: a == ";") if not is_separator]
    for verb, *args in runs:
        module = importlib.import_module(f"fcnwild.tools.{verb}_cmd")
        parser = argparse.ArgumentParser(prog=f"fcnwild {verb}")
        module.add_arguments(parser)
        status = module.run(parser.parse_args(args))
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
