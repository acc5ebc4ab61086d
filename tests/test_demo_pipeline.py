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
    """Two seeds in two worker processes: every stage of each, the table of means with
    intervals, per-class changes and the claims; the figures; the artefacts reload."""
    out = tmp_path / "demo"
    assert run_verb(demo_cmd, ["--out", str(out), "--scale", "0.01", "--images", "16",
                               "--image-size", "32x64", "--seeds", "0,3", "--jobs", "2",
                               "--quiet"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 3] and set(results["stages"]) == set(STAGES)
    assert results["benchmark"]["3"]["config"]["height"] == 32
    assert results["benchmark"]["3"]["config"]["seed"] == 3
    for seed in (0, 3):
        # The final weights, scored afresh, give the stage's recorded metrics.
        scorer = TargetScorer(synthetic_experiment(seed, 0.01, height=32, width=64, images=16))
        for stage, entry in results["stages"].items():
            folder = out / f"seed_{seed}" / stage
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["stage"] == stage
            rescored = scorer.evaluate(folder / "final.caffemodel").to_dict()
            assert rescored["iou"] == metrics["iou"]
            per_seed = entry["iou_per_seed"][str(seed)]
            assert all((per_seed[c] is None) == (metrics["iou"][c] is None) and
                       (per_seed[c] is None or abs(per_seed[c] - 100 * metrics["iou"][c]) < 1e-9)
                       for c in results["classes"])
            curves = json.loads((folder / "curves.json").read_text())
            assert len(curves["loss"]) == entry["iterations"] == metrics["iterations"]
    for stage, entry in results["stages"].items():
        values = list(entry["miou_per_seed"].values())
        assert entry["miou"]["mean"] == pytest.approx(sum(values) / 2)
        assert entry["miou"]["low"] < entry["miou"]["mean"] < entry["miou"]["high"] or \
            values[0] == values[1]
        assert f"{entry['miou']['mean']:6.1f}" in printed
    ga = results["effects"]["GA"]
    assert ga["per_seed"]["3"] == pytest.approx(results["stages"]["ga"]["miou_per_seed"]["3"]
                                                - results["stages"]["source_only"]["miou_per_seed"]["3"])
    assert [c.split(" ", 1)[0].rstrip("'s") for c in results["claims"]] == ["GA", "CA", "GA+CA"]
    for sentence in results["claims"]:
        assert sentence in printed
    ga_ca = json.loads((out / "seed_0" / "ga_ca" / "curves.json").read_text())
    assert {"dom_accuracy", "mil_loss"} <= set(ga_ca)
    for figure in ("qualitative.png", "training_curves.png", "iou_per_class.png"):
        from PIL import Image
        with Image.open(out / figure) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert (out / "table.txt").read_text().strip() in printed


def test_demo_with_one_seed_says_it_is_one_sample(tmp_path, cache, capsys):
    out = tmp_path / "demo"
    assert run_verb(demo_cmd, ["--out", str(out), "--scale", "0.005", "--images", "8",
                               "--image-size", "32x64", "--seed", "2", "--no-oracle",
                               "--jobs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    def no_nan(token):
        raise AssertionError(f"results.json holds {token}, which JSON does not have")
    results = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    assert results["seeds"] == [2] and "oracle" not in results["stages"]
    assert results["stages"]["ga"]["miou"]["low"] is None
    assert "one sample" in results["claims"][0] and results["claims"][0] in printed
    assert "target val IoU (%), seed 2" in printed


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


def test_seeds_give_the_same_numbers_in_one_process_and_in_parallel_workers(tmp_path, cache):
    """Each stage runs on one thread wherever it runs: a seed's results do not depend on
    how many jobs ran at once or which ran beside it."""
    import functools

    from fcnwild.tools.experiment.seeds import run_seeds
    make = functools.partial(synthetic_experiment, scale=0.01, height=32, width=64, images=8)
    finished = []
    inline = run_seeds(make, [4, 5], tmp_path / "one", ("source_only", "ga"), jobs=1,
                       quiet=True, on_done=lambda seed, results: finished.append(seed))
    parallel = run_seeds(make, [4, 5], tmp_path / "two", ("source_only", "ga"), jobs=2,
                         quiet=True)
    assert sorted(finished) == [4, 5]
    for seed in (4, 5):
        for stage in ("source_only", "ga"):
            assert inline[seed][stage]["iou"] == parallel[seed][stage]["iou"]
            weights = [(root / f"seed_{seed}" / stage / "final.caffemodel").read_bytes()
                       for root in (tmp_path / "one", tmp_path / "two")]
            assert weights[0] == weights[1]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,0"], "a seed is given twice"),
    (["--seeds", "1", "2", "1"], "a seed is given twice"),
    (["--jobs", "0"], "--jobs 0: expected at least 1"),
    (["--image-size", "48"], "expected HxW"),
])
def test_demo_refuses_bad_flags_before_anything_runs(tmp_path, argv, message):
    with pytest.raises(UsageError, match=message):
        run_verb(demo_cmd, ["--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()


def test_demo_seed_flags_parse_both_spellings():
    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    assert parser.parse_args(["--seeds", "0,1,2"]).seeds == [[0, 1, 2]]
    assert parser.parse_args(["--seeds", "3", "4"]).seeds == [[3], [4]]
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "1", "--seed", "2"])
