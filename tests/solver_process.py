"""Run fcnwild verbs in this (new) process: ``python solver_process.py VERB ARGS...``.

Several runs may follow one another, separated by a lone ``;`` argument; each
builds its own objects, none sees what the test process had in memory. Works
under torchrun too. The verb modules are called directly, as ``fcnwild <verb>``
would, so the test does not depend on every verb of the CLI being importable.
``--serve`` forks one child per run instead (see ``serve``), for tests that
start and kill many runs.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time
import traceback

# Test hook: seconds every atomic write waits, its temporary file complete, before it
# replaces the final name, so that a test's kill can land in the middle of a snapshot.
WRITE_DELAY = "FCNWILD_TEST_WRITE_DELAY"


def _delay_atomic_writes(seconds: float) -> None:
    from fcnwild.base import atomic
    publish = atomic._publish

    def slow_publish(tmp, path):
        time.sleep(seconds)
        publish(tmp, path)
    atomic._publish = slow_publish


def main(argv: list[str]) -> int:
    if os.environ.get(WRITE_DELAY):
        _delay_atomic_writes(float(os.environ[WRITE_DELAY]))
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


def serve() -> int:
    """``solver_process.py --serve``: one JSON list of arguments per stdin line, each run by
    main() in a forked child, so the imports are paid once and a child starts in
    milliseconds (for tests that start and kill many runs). Prints ``started PID`` and,
    once the child is gone, ``exited PID STATUS`` (os.waitpid's status)."""
    import json
    importlib.import_module("fcnwild.tools.train_cmd")
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)           # stdout carries this protocol; the child logs to stderr
            code = 1
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
