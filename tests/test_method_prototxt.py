"""prototxt/: the shipped nets and solvers are current, build, and the full-width
front-end GA+CA net runs an alternating iteration on CPU at a small crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_layouts import make_cityscapes, make_gta5

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.data.class_stats import compute_class_stats, save_class_stats
from fcnwild.data.datasets import open_dataset
from fcnwild.nets.net import Net
from fcnwild.nets.prototxt import read_net_param, read_solver_param
from fcnwild.solvers.adversarial import AlternatingSolver
from fcnwild.tools.experiment.paper import all_files

PROTOTXT = Path(__file__).resolve().parents[1] / "prototxt"


def test_committed_prototxt_files_are_what_the_generator_writes(tmp_path):
    from fcnwild.tools.experiment.paper import write_all
    for path in write_all(tmp_path):
        relative = path.relative_to(tmp_path)
        committed = PROTOTXT / relative
        assert committed.exists(), f"prototxt/{relative} is missing: regenerate"
        assert committed.read_text() == path.read_text(), f"prototxt/{relative} is stale"


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    """Tiny GTA5 and Cityscapes trees in the official layouts, named by the env vars, and
    image/label lists of them for the ImageLabelData twins."""
    make_gta5(tmp_path / "gta5", frames=4, size=(40, 48))
    make_cityscapes(tmp_path / "cityscapes", "train", {"aachen": 3}, size=(40, 48))
    monkeypatch.setenv("GTA5_ROOT", str(tmp_path / "gta5"))
    monkeypatch.setenv("CITYSCAPES_ROOT", str(tmp_path / "cityscapes"))
    for stem, images, labels in (
            ("GTA5_ALL", "gta5/images/*.png", "gta5/labels/*.png"),
            ("CITYSCAPES_TRAIN", "cityscapes/leftImg8bit/train/*/*.png",
             "cityscapes/gtFine/train/*/*.png")):
        for kind, pattern in (("IMAGE", images), ("LABEL", labels)):
            listed = tmp_path / f"{stem}_{kind}.txt"
            listed.write_text("\n".join(str(f) for f in sorted(tmp_path.glob(pattern))))
            monkeypatch.setenv(f"{stem}_{kind}_LIST", str(listed))
    return tmp_path


@pytest.mark.parametrize("relative", [r for r, m, _ in all_files()
                                      if isinstance(m, caffe_pb2.NetParameter)
                                      and r.startswith(("frontend/", "gta5_to_cityscapes/"))
                                      and "test_net" not in r])
def test_shipped_nets_build(relative, datasets, monkeypatch):
    stats = datasets / "class_stats.json"
    save_class_stats(compute_class_stats(open_dataset(f"gta5:{datasets / 'gta5'}", "all"),
                                         workers=1, progress=False), stats)
    param = read_net_param(PROTOTXT / relative)
    for layer in param.layer:
        if layer.type == "ConstrainedMILLoss":
            layer.constrained_mil_param.class_stats = str(stats)
    with torch.device("meta"):
        net = Net(param, phase="train")
    assert net.blobs["data"].shape[2:] == (500, 500)
    assert net.blobs["fc7"].shape[2:] == (16, 16)                 # (500 - 372) / 8
    if "label" in net.blobs:
        assert net.blobs["upscore"].shape[2:] == net.blobs["label"].shape[2:] == (128, 128)


def test_missing_dataset_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GTA5_ROOT", raising=False)
    with pytest.raises(NetError, match="GTA5_ROOT"):
        with torch.device("meta"):
            Net(PROTOTXT / "gta5_to_cityscapes" / "source_only_net.prototxt", phase="train")


def test_full_width_ga_ca_runs_an_alternating_iteration(datasets):
    stats = datasets / "class_stats.json"
    save_class_stats(compute_class_stats(open_dataset(f"gta5:{datasets / 'gta5'}", "all"),
                                         workers=1, progress=False), stats)
    folder = PROTOTXT / "gta5_to_cityscapes"
    solver_param = read_solver_param(folder / "ga_ca_solver.prototxt")
    net = read_net_param(folder / "ga_ca_net.prototxt")
    for layer in net.layer:
        if layer.type == "SegmentationData":
            # The smallest crop the unpadded front-end takes: one fc7 unit per image.
            layer.segmentation_data_param.crop_size = 380
            layer.segmentation_data_param.workers = 0
        if layer.type == "ConstrainedMILLoss":
            layer.constrained_mil_param.class_stats = str(stats)
    solver_param.ClearField("net")
    solver_param.net_param.CopyFrom(net)
    solver_param.iter_size = 1
    solver_param.snapshot = 0
    solver = AlternatingSolver(solver_param)
    assert solver.net.blobs["fc7"].shape == (2, 4096, 1, 1)
    fc6 = solver.net.params["fc6"][0].data.copy()
    dom = solver.net.params["dom_score"][0].data.copy()
    solver.step(1)
    assert solver.iter == 1
    assert not np.array_equal(fc6, solver.net.params["fc6"][0].data)
    assert not np.array_equal(dom, solver.net.params["dom_score"][0].data)
    assert {"loss", "dom_loss", "dom_loss_inv", "mil_loss"} <= set(solver.step_losses)
    assert all(np.isfinite(v) for v in solver.step_losses.values())
