"""``fcnwild pycaffe SCRIPT [ARGS...]``: run an unmodified pycaffe script with ``import
caffe`` resolving to ``fcnwild.caffe``.

The script runs as ``python SCRIPT ARGS`` would run it: ``__name__ == "__main__"``,
``sys.argv == [SCRIPT, *ARGS]``, the script's folder first on ``sys.path``.
``--shim-path`` prints the folder to put on ``PYTHONPATH`` so that plain ``python``
finds ``caffe`` the same way.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

import fcnwild.caffe
from fcnwild.caffe._caffe import init_log
from fcnwild.caffe.importer import install_caffe_alias


def shim_path() -> Path:
    """The folder whose ``caffe/`` package aliases ``import caffe`` to fcnwild.caffe."""
    return Path(fcnwild.caffe.__file__).resolve().parent / "shim"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shim-path", action="store_true",
                        help="print the folder to put on PYTHONPATH for `import caffe` to "
                             "find fcnwild.caffe, and exit")
    parser.add_argument("script", nargs="?", help="the pycaffe script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="the script's own arguments, passed on unchanged")


def run(args: argparse.Namespace) -> int:
    if args.shim_path:
        print(shim_path())
        return 0
    if args.script is None:
        print("fcnwild pycaffe: error: give the script to run (or --shim-path)",
              file=sys.stderr)
        return 2
    script = Path(args.script)
    if not script.is_file():
        print(f"fcnwild pycaffe: error: can't open file '{script}'", file=sys.stderr)
        return 2
    install_caffe_alias()
    # pycaffe's glog writes to stderr until the script initialises it.
    init_log()
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    runpy.run_path(str(script), run_name="__main__")
    return 0
