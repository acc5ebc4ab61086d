"""``fcnwild compare``: a net's blobs, diffs and param diffs against Caffe reference blobs."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fcnwild.nets.net import Net
from fcnwild.nets.reference import DEFAULT_TOLERANCES, Tolerance, case_workdir, \
    compare_with_reference, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="net prototxt")
    parser.add_argument("--weights", help="caffemodel / .h5 / .pt weights (default: the "
                        "reference file's params/ group is not used; the net's fillers are)")
    parser.add_argument("--reference", required=True, help="reference blobs (HDF5)")
    parser.add_argument("--phase", choices=["train", "test"], default="train",
                        help="phase the reference was recorded in (default: train)")
    parser.add_argument("--forward-tol", type=float, default=DEFAULT_TOLERANCES["forward"].rtol,
                        help="forward tolerance relative to each blob's max |value|")
    parser.add_argument("--backward-tol", type=float,
                        default=DEFAULT_TOLERANCES["backward"].rtol,
                        help="backward and param-diff tolerance, relative")
    parser.add_argument("--atol", type=float, help="absolute floor for every kind (default: "
                        + ", ".join(f"{kind} {t.atol:g}" for kind, t in DEFAULT_TOLERANCES.items())
                        + "); an array passes when max|ours - ref| <= atol + tol * max|ref|")
    parser.add_argument("--forward-only", action="store_true", help="skip backward")
    parser.add_argument("--device", default="cpu",
                        help="torch device to run on, e.g. cuda (TF32 is turned off there)")
    parser.add_argument("--allow-python", action="store_true",
                        help="allow Python layers (they run arbitrary code)")
    parser.add_argument("--workdir", help="working directory for the net's layers (where "
                        "relative file names resolve and HDF5Output writes). A reference "
                        "case folder (meta.json beside the blobs) was recorded with itself "
                        "as working directory: the files its meta.json lists are copied into "
                        "this folder, by default a temporary one, so the reference folder is "
                        "never written to. Default for other references: the current "
                        "directory")


def run(args: argparse.Namespace) -> int:
    # Caffe computes in plain fp32: TF32 would miss the reference tolerances.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rtols = {"forward": args.forward_tol, "backward": args.backward_tol,
             "param_diffs": args.backward_tol}
    tolerances = {kind: Tolerance(rtol, DEFAULT_TOLERANCES[kind].atol if args.atol is None
                                  else args.atol) for kind, rtol in rtols.items()}
    # Paths given on the command line are relative to where the user is, not the workdir.
    model, reference = Path(args.model).resolve(), Path(args.reference).resolve()
    weights = Path(args.weights).resolve() if args.weights else None
    with case_workdir(reference, args.workdir):
        net = Net(model, weights=weights, phase=args.phase,
                  allow_python=args.allow_python).to(args.device)
        results = compare_with_reference(net, reference, tolerances=tolerances,
                                         backward=not args.forward_only)
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1
