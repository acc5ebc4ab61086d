"""The `fcnwild eval` (saved predictions) and `fcnwild stats` verbs, end to end."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
from data_layouts import make_cityscapes, make_gta5, write_grey

from fcnwild.data.class_stats import load_class_stats
from fcnwild.tools import eval_cmd, stats_cmd


def run_verb(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_eval_scores_a_prediction_folder(tmp_path, capsys):
    written = make_cityscapes(tmp_path / "cs", cities={"aachen": 2, "bremen": 1}, size=(12, 20))
    for name, ids in written.items():
        city, stem = name.split("/")
        perfect = ids.copy()
        write_grey(tmp_path / "pred" / f"{stem.replace('_leftImg8bit', '')}_labelIds.png", perfect)
    rc = run_verb(eval_cmd, ["--dataset", f"cityscapes:{tmp_path / 'cs'}", "--split", "val",
                             "--predictions", str(tmp_path / "pred"), "--json", str(tmp_path / "r.json"),
                             "--csv", str(tmp_path / "r.csv"), "--no-progress", "--workers", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "road sidewalk building" in out and "100.0" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["num_images"] == 3 and data["mean_iou"]["19"] == 1.0
    assert set(data["mean_iou"]) == {"19", "16", "13"}


def test_stats_writes_the_file_the_mil_loss_reads(tmp_path, capsys):
    make_gta5(tmp_path / "gta", frames=4, size=(8, 10), split={"train": [1, 2, 3], "val": [4]})
    rc = run_verb(stats_cmd, ["--dataset", f"gta5:{tmp_path / 'gta'}", "--split", "train",
                              "--out", str(tmp_path / "stats.json"), "--no-progress"])
    assert rc == 0
    stats = load_class_stats(tmp_path / "stats.json", 19)
    assert stats.num_images == 3
    assert np.all(stats.alpha <= stats.delta) and np.all(stats.delta <= stats.gamma)
    assert "alpha   delta   gamma" in capsys.readouterr().out


def test_a_library_warning_reaches_the_user_as_one_plain_line(tmp_path):
    # One image all 'car' among 1/64-car images: the stats clip car's mean and warn.
    from data_layouts import make_skewed_car_gta5
    make_skewed_car_gta5(tmp_path / "gta")
    done = subprocess.run([sys.executable, "-m", "fcnwild.tools.cli", "stats", "--dataset",
                           f"gta5:{tmp_path / 'gta'}", "--out", str(tmp_path / "s.json"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("fcnwild: warning: mean class size")
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr
