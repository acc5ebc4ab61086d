"""``fcnwild compare``: a net's blobs, diffs and param diffs against Caffe reference blobs,
or (``--emit-caffe-script``) the pycaffe script that records such a reference with Caffe."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fcnwild.base.atomic import atomic_write
from fcnwild.base.errors import UsageError
from fcnwild.nets.net import Net
from fcnwild.nets.reference import DEFAULT_TOLERANCES, Tolerance, case_workdir, \
    compare_with_reference, format_table
from fcnwild.nets.reference_files import FLAT_NAMING
from fcnwild.nets.reference_script import caffe_reference_script

EPILOG = f"""References: the full HDF5 layout (groups inputs/, forward/, backward/, top_diff/,
params/, param_diffs/, params_after_forward/, forward_calls/<k>/, aux/), as Caffe's
reference fixtures and --emit-caffe-script record it; or a flat dump, one array per name:
an .npz file, a folder of <name>.npy files or an HDF5 file of datasets (a '/' in a name is
a sub-folder or group). Names in a flat dump: {FLAT_NAMING}. A name that is no blob or
layer of the net is an error. Example: np.savez('ref.npz', **{{k: b.data for k, b in
net.blobs.items()}}, **{{k + '@diff': b.diff for k, b in net.blobs.items()}})"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="net prototxt")
    parser.add_argument("--weights", help="caffemodel / .h5 / .pt weights (default: the "
                        "reference's params when it has them, else the net's fillers; with "
                        "weights the reference's params are compared with them)")
    parser.add_argument("--reference", help="reference blobs: HDF5 (full layout or one "
                        "dataset per name), .npz, or a folder of .npy files")
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
    parser.add_argument("--emit-caffe-script", metavar="OUT.py",
                        help="instead of comparing, write a pycaffe script that records a "
                        "reference in the full layout with real Caffe (for --model, "
                        "--weights, --phase and the --input arrays)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="with --emit-caffe-script: the array fed to net input NAME "
                        "(once per input)")


def run(args: argparse.Namespace) -> int:
    if args.emit_caffe_script:
        return _emit_script(args)
    if not args.reference:
        raise UsageError("give --reference (the blobs to compare with) or "
                         "--emit-caffe-script (to record them with Caffe)")
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
                                         backward=not args.forward_only,
                                         load_params=weights is None)
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1


def _emit_script(args: argparse.Namespace) -> int:
    if args.reference:
        raise UsageError("--emit-caffe-script writes the script that records a reference; "
                         "leave out --reference")
    inputs = {}
    for item in args.input:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input {item!r}: expected NAME=FILE.npy")
        if not Path(file).is_file():
            raise UsageError(f"--input {item!r}: no such file {file}")
        inputs[name] = Path(file).resolve()
    out = Path(args.emit_caffe_script)
    text = caffe_reference_script(
        Path(args.model).resolve(), Path(args.weights).resolve() if args.weights else None,
        inputs, args.phase, output=f"{Path(args.model).stem}_reference.h5",
        script_name=out.name)
    with atomic_write(out, "w") as file:
        file.write(text)
    out.chmod(0o755)
    print(f"wrote {out}: run it with Caffe's pycaffe (python {out.name} [OUTPUT.h5]), then "
          f"fcnwild compare --reference OUTPUT.h5 with the same --model, --weights and "
          f"--phase")
    return 0
