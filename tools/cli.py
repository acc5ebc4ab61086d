"""The ``fcnwild`` command: one verb per module of this package.

Mirrors Caffe's own tool (``train``, ``test``, ``time``, ``device_query``, with
Caffe's single-dash flags too: ``caffe_flags.py``) and adds fcnwild's verbs. The
opt-in ``caffe`` script in ``pycaffe/shim/bin`` runs ``main`` under the name
``caffe``. Each verb module exposes ``add_arguments(parser)`` and ``run(args) ->
int``; this file only dispatches, so ``fcnwild <verb> --help`` stays the
single source of truth for a verb's flags.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from fcnwild.base.errors import FcnwildError
from fcnwild.tools.allocator import retain_freed_memory

# verb -> (module under fcnwild.tools, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "train": ("train_cmd", "train a net with a Caffe solver prototxt"),
    "test": ("test_cmd", "score a model: mean of every output blob over N iterations"),
    "time": ("time_cmd", "per-layer forward/backward timing and achieved GFLOP/s"),
    "device_query": ("device_query_cmd", "show a CUDA device's properties (Caffe's device_query)"),
    "convert": ("convert_cmd", "convert weights (caffemodel <-> h5 <-> torch) and prototxt V1 -> V2"),
    "compare": ("compare_cmd", "compare a net's blobs, diffs and param diffs with Caffe reference blobs"),
    "eval": ("eval_cmd", "per-class IoU / mIoU of a model or of saved predictions on a dataset split"),
    "stats": ("stats_cmd", "per-class size statistics (alpha, delta, gamma) of a labelled source dataset"),
    "surgery": ("surgery_cmd", "turn VGG16 fc6/fc7 into the front-end's convolutional fc6/fc7"),
    "adapt": ("adapt_cmd", "source-only -> GA -> GA+CA adaptation, evaluated on the target val split"),
    "demo": ("demo_cmd", "the whole story on the embedded synthetic benchmark: tables and figures"),
    "dilation-train": ("dilation_train_cmd", "write the nets and solver fyu/dilation's train.py "
                       "writes, and the fcnwild train command for them"),
    "pycaffe": ("pycaffe_cmd", "run an unmodified pycaffe script with `import caffe` as fcnwild.caffe"),
}


def build_parser(prog: str = "fcnwild") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Caffe-exact FCNs in the Wild: train, test, time, adapt.")
    sub = parser.add_subparsers(dest="verb", metavar="<command>")
    sub.required = True
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(f"fcnwild.tools.{module_name}")
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(run=module.run)
    return parser


def plain_warning(prog: str):
    """A ``warnings.formatwarning`` that prints ``prog: warning: message``: a warning from the
    library is advice to the user, not a source line of ours to debug."""
    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"{prog}: warning: {message}\n"
    return format_warning


def main(argv: Sequence[str] | None = None, prog: str = "fcnwild") -> int:
    """Run one verb; ``prog`` is the program name messages give (``caffe`` for the shim)."""
    args = build_parser(prog).parse_args(argv)
    warnings.formatwarning = plain_warning(prog)
    retain_freed_memory()
    try:
        return int(args.run(args) or 0)
    except FcnwildError as err:
        print(f"{prog} {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
