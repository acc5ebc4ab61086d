"""Every Caffe reference case through the Net: forward blobs, diffs, param diffs, later
forward calls and written files, at each case's own tolerances (the same comparison
``fcnwild compare`` prints), each in a scratch working directory as Caffe ran it."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from caffe_fixture import FIXTURES, case_names
from fcnwild.base.errors import FcnwildError
from fcnwild.nets.net import Net
from fcnwild.nets.reference import case_workdir, compare_with_reference, format_table, \
    tolerances_of

NET_CASES = [n for n in case_names() if not n.startswith("solver_")]


def run_case(name: str, workdir: Path, device: str = "cpu"):
    case = FIXTURES / name
    meta = json.loads((case / "meta.json").read_text())
    weights = case / "weights.caffemodel"
    if (case / "weights.caffemodel.h5").exists():
        weights = case / "weights.caffemodel.h5"
    with case_workdir(case / "blobs.h5", workdir):
        net = Net(case / "net.prototxt", weights=weights, phase=meta["phase"].lower()).to(device)
        results = compare_with_reference(net, case / "blobs.h5", tolerances=tolerances_of(meta))
    return net, results


@pytest.mark.parametrize("name", NET_CASES)
def test_case_matches_caffe(name, device, tmp_path):
    net, results = run_case(name, tmp_path, device)
    assert results, "nothing was compared"
    assert all(r.passed for r in results), "\n" + format_table(results)


def test_every_forward_call_of_a_recurrent_net_is_compared(tmp_path):
    """The LSTM state carried into the second forward is part of the comparison."""
    net, results = run_case("lstm", tmp_path)
    compared = {(r.kind, r.name) for r in results}
    assert {("forward_calls/1", "h"), ("backward", "x"), ("param_diffs", "lstm/2")} <= compared
    with h5py.File(FIXTURES / "lstm" / "blobs.h5") as h5:
        first, second = h5["forward_calls/0/h"][()], h5["forward_calls/1/h"][()]
    assert abs(first - second).max() > 1e-3   # the second call really differs
    net.layer_dict["lstm"].h_state.zero_()     # a net that forgot its state fails the case
    net.layer_dict["lstm"].c_state.zero_()
    net.forward()
    assert abs(net.blobs["h"].data - second).max() > 1e-3


def test_a_case_reading_a_file_runs_in_a_copy_of_it(tmp_path):
    """infogain_loss_source reads infogain_H.binaryproto (meta.json: files): the case's
    working directory holds a copy, and the reference folder is left as it was."""
    case = FIXTURES / "infogain_loss_source"
    before = sorted(p.name for p in case.iterdir())
    with case_workdir(case / "blobs.h5", tmp_path / "work") as folder:
        assert Path.cwd() == folder.resolve()
        assert (folder / "infogain_H.binaryproto").read_bytes() == \
            (case / "infogain_H.binaryproto").read_bytes()
    assert Path.cwd() != folder.resolve()
    assert sorted(p.name for p in case.iterdir()) == before


def test_a_case_listing_a_missing_file_is_an_error(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    (case / "meta.json").write_text(json.dumps({"files": {"gone.binaryproto": "H"}}))
    with pytest.raises(FcnwildError, match="gone.binaryproto"):
        with case_workdir(case / "blobs.h5"):
            pass


def test_every_recorded_blob_of_a_full_net_is_compared(tmp_path):
    net, results = run_case("dilation_frontend_domain_small", tmp_path)
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


def test_fcnwild_compare_keeps_its_workdir_when_asked(tmp_path, capsys):
    from fcnwild.tools.cli import main
    case = FIXTURES / "infogain_loss_source"
    status = main(["compare", "--model", str(case / "net.prototxt"), "--weights",
                   str(case / "weights.caffemodel"), "--reference", str(case / "blobs.h5"),
                   "--workdir", str(tmp_path / "kept")])
    assert status == 0, capsys.readouterr().out
    assert (tmp_path / "kept" / "infogain_H.binaryproto").is_file()


def small_net_and_reference(tmp_path: Path, aux: str):
    text = ('name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { '
            'dim: 2 } } } layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }')
    (tmp_path / "net.prototxt").write_text(text)
    with h5py.File(tmp_path / "blobs.h5", "w") as h5:
        h5["inputs/x"] = h5["forward/x"] = [-1.0, 2.0]
        h5["forward/y"] = [1.0, 2.0]
        h5[f"aux/{aux}"] = [1.0, 2.0]
    return Net(tmp_path / "net.prototxt"), tmp_path / "blobs.h5"


def test_memory_data_arrays_need_a_memory_data_layer_first(tmp_path):
    net, reference = small_net_and_reference(tmp_path, "memory_data/data")
    with pytest.raises(FcnwildError, match="MemoryData layer first"):
        compare_with_reference(net, reference)


def test_a_file_the_net_never_wrote_fails_the_comparison(tmp_path):
    net, reference = small_net_and_reference(tmp_path, "hdf5_output/data")
    results = compare_with_reference(net, reference)
    written = [r for r in results if r.kind == "written_file"]
    assert [r.passed for r in written] == [False]
    assert written[0].note == "the net has no HDF5Output layer"
    assert all(r.passed for r in results if r.kind == "forward")
