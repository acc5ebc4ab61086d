"""Every Caffe reference case through the Net: forward blobs, diffs and param diffs,
at each case's own tolerances (the same comparison ``fcnwild compare`` prints)."""
from __future__ import annotations

import json

import pytest

from caffe_fixture import FIXTURES, case_names
from fcnwild.nets.net import Net
from fcnwild.nets.reference import compare_with_reference, format_table

# Data-layer cases record several forward calls and no inputs (memory_data needs arrays
# fed, hdf5_output writes a file): test_layers_data_caffe.py drives them through the Net.
DATA_LAYER_CASES = {"data_lmdb", "image_data", "memory_data", "window_data", "hdf5_output"}
NET_CASES = [n for n in case_names() if not n.startswith("solver_")
             and n not in DATA_LAYER_CASES]


def run_case(name: str, device: str = "cpu"):
    case = FIXTURES / name
    meta = json.loads((case / "meta.json").read_text())
    weights = case / "weights.caffemodel"
    if (case / "weights.caffemodel.h5").exists():
        weights = case / "weights.caffemodel.h5"
    net = Net(case / "net.prototxt", weights=weights, phase=meta["phase"].lower()).to(device)
    tol = meta["tolerances"]
    # The case's rule is atol + rtol*max|ref|; ours is max(atol, rtol*max|ref|), which is
    # never looser than the case's for the same pair.
    results = compare_with_reference(
        net, case / "blobs.h5", atol=min(t["atol"] for t in tol.values() if isinstance(t, dict)
                                         and "atol" in t),
        tolerances={k: tol[k]["rtol"] for k in ("forward", "backward", "param_diffs")
                    if k in tol})
    return net, results


@pytest.mark.parametrize("name", NET_CASES)
def test_case_matches_caffe(name, device):
    net, results = run_case(name, device)
    assert results, "nothing was compared"
    assert all(r.passed for r in results), "\n" + format_table(results)


def test_every_recorded_blob_of_a_full_net_is_compared():
    net, results = run_case("dilation_frontend_domain_small")
    compared = {(r.kind, r.name) for r in results}
    assert ("forward", "fc7_relu7_0_split_1") in compared        # Caffe's implicit split
    assert ("backward", "fc7") in compared
    assert ("param_diffs", "dom_score/0") in compared
    assert sum(r.kind == "forward" for r in results) == len(net.blobs)


@pytest.mark.parametrize("name", NET_CASES)
def test_fcnwild_compare_passes_every_case_at_its_default_tolerances(name, capsys):
    from fcnwild.tools.cli import main
    case = FIXTURES / name
    meta = json.loads((case / "meta.json").read_text())
    weights = next(case / f for f in ("weights.caffemodel.h5", "weights.caffemodel")
                   if (case / f).exists())
    status = main(["compare", "--model", str(case / "net.prototxt"), "--weights", str(weights),
                   "--reference", str(case / "blobs.h5"), "--phase", meta["phase"].lower()])
    table = capsys.readouterr().out
    assert status == 0, table
    assert "forward" in table
