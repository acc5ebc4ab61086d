"""A miniature of the whole pipeline: ``fcnwild demo`` on a tiny benchmark, a few
iterations per stage; every artefact is written and loads; ``fcnwild adapt`` resumes
and rejects bad datasets before training."""
from __future__ import annotations

import argparse
import json

import pytest

from fcnwild.base.errors import DatasetError, UsageError
from fcnwild.tools import adapt_cmd, demo_cmd
from fcnwild.tools.experiment import run as run_module
from fcnwild.tools.experiment.config import STAGES, synthetic_experiment
from fcnwild.tools.experiment.scoring import TargetScorer


def run_verb(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNWILD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_demo_miniature_writes_every_artefact(tmp_path, cache, capsys):
    out = tmp_path / "demo"
    assert run_verb(demo_cmd, ["--out", str(out), "--scale", "0.01", "--images", "16",
                               "--image-size", "32x64", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for title in ("source only", "GA", "GA+CA", "oracle"):
        assert title in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["stages"]) == set(STAGES)
    assert results["seed"] == 0 and results["benchmark"]["config"]["height"] == 32
    # The final weights, scored afresh, give the stage's recorded metrics.
    scorer = TargetScorer(synthetic_experiment(0, 0.01, height=32, width=64, images=16))
    for stage, entry in results["stages"].items():
        assert 0 <= entry["miou"] <= 1 and set(entry["iou"]) == set(results["classes"])
        metrics = json.loads((out / stage / "metrics.json").read_text())
        rescored = scorer.evaluate(out / stage / "final.caffemodel").to_dict()
        assert rescored["iou"] == metrics["iou"]
        curves = json.loads((out / stage / "curves.json").read_text())
        assert len(curves["loss"]) == entry["iterations"]
        assert json.loads((out / stage / "metrics.json").read_text())["stage"] == stage
    ga_ca = json.loads((out / "ga_ca" / "curves.json").read_text())
    assert {"dom_accuracy", "mil_loss"} <= set(ga_ca)
    for figure in ("qualitative.png", "training_curves.png", "iou_per_class.png"):
        from PIL import Image
        with Image.open(out / figure) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert (out / "table.txt").read_text().strip() in printed


def test_adapt_resumes_finished_stages(tmp_path, cache, monkeypatch):
    out = tmp_path / "adapt"
    argv = ["--out", str(out), "--scale", "0.005", "--stages", "source_only"]
    original = adapt_cmd.synthetic_experiment
    monkeypatch.setattr(adapt_cmd, "synthetic_experiment", lambda seed, scale: original(
        seed, scale, height=32, width=64, images=8))       # a tiny benchmark
    assert run_verb(adapt_cmd, argv) == 0
    stage = out / "source_only"
    written = {path: path.stat().st_mtime_ns for path in stage.rglob("*")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")
    monkeypatch.setattr(run_module, "create_solver", no_training)
    assert run_verb(adapt_cmd, argv) == 0
    assert {path: path.stat().st_mtime_ns for path in stage.rglob("*")} == written


@pytest.mark.parametrize("argv, message", [
    (["--source", "gta5:/nonexistent/GTA5", "--target", "cityscapes:/nonexistent/cs"],
     (DatasetError, "GTA5")),
    (["--source", "gta5:/nonexistent"], (UsageError, "both --source and --target")),
    (["--stages", "source_only,gaa"], (UsageError, "unknown stage")),
])
def test_adapt_refuses_bad_datasets_before_training(tmp_path, argv, message):
    error, text = message
    with pytest.raises(error, match=text):
        run_verb(adapt_cmd, ["--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()


def test_adapt_refuses_a_target_in_another_label_space(tmp_path):
    from data_layouts import make_gta5, make_synthia_seqs
    make_gta5(tmp_path / "gta5", frames=2)
    make_synthia_seqs(tmp_path / "seqs", {"SYNTHIA-SEQS-01-WINTER": 2})
    with pytest.raises(UsageError, match="--classes 13"):
        run_verb(adapt_cmd, ["--out", str(tmp_path / "x"), "--source",
                             f"gta5:{tmp_path / 'gta5'}", "--target",
                             f"synthia-seqs:{tmp_path / 'seqs'}?season=winter",
                             "--source-split", "all",
                             "--target-split", "all", "--eval-split", "all"])
    assert not (tmp_path / "x").exists()


def test_adapt_defaults_to_splits_each_official_layout_has(tmp_path):
    from data_layouts import make_cityscapes, make_gta5
    make_gta5(tmp_path / "gta5", frames=2)           # the published layout: no split.mat
    make_cityscapes(tmp_path / "cs", split="train", cities={"aachen": 1})
    make_cityscapes(tmp_path / "cs", split="val", cities={"bremen": 1})
    parser = argparse.ArgumentParser()
    adapt_cmd.add_arguments(parser)
    args = parser.parse_args(["--source", f"gta5:{tmp_path / 'gta5'}", "--target",
                              f"cityscapes:{tmp_path / 'cs'}", "--iter-size", "3"])
    experiment = adapt_cmd.experiment_from_args(args)
    assert (experiment.source.split, experiment.target.split) == ("all", "train")
    assert {s.iter_size for s in experiment.settings.values()} == {3}
    args.source_split = "train"       # asked for explicitly, the split needs split.mat
    with pytest.raises(DatasetError, match="split.mat is missing"):
        adapt_cmd.experiment_from_args(args)
