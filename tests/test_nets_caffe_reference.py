"""Every Caffe reference case through the Net: forward blobs, diffs and param diffs,
at each case's own tolerances (the same comparison ``fcnwild compare`` prints)."""
from __future__ import annotations

import json

import pytest

from caffe_fixture import FIXTURES, case_names
from fcnwild.nets.net import Net
from fcnwild.nets.reference import compare_with_reference, format_table, tolerances_of

# caffe-dilation's data-layer nets have no Input, so no inputs/ group, which
# compare_with_reference requires; test_layers_dilation_data.py runs them through the Net
# against every recorded forward call.
DATA_LAYER_CASES = {"image_label_data_frontend", "image_label_data_constant_pad",
                    "bin_label_data"}
NET_CASES = [n for n in case_names() if not n.startswith("solver_")
             and n not in DATA_LAYER_CASES]


def run_case(name: str, device: str = "cpu"):
    case = FIXTURES / name
    meta = json.loads((case / "meta.json").read_text())
    weights = case / "weights.caffemodel"
    if (case / "weights.caffemodel.h5").exists():
        weights = case / "weights.caffemodel.h5"
    net = Net(case / "net.prototxt", weights=weights, phase=meta["phase"].lower()).to(device)
    results = compare_with_reference(net, case / "blobs.h5", tolerances=tolerances_of(meta))
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
