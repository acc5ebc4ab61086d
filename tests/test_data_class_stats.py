"""Per-class size statistics (alpha, delta, gamma) and their JSON file."""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_layouts import make_gta5, make_skewed_car_gta5, write_palette

from fcnwild.base.errors import DatasetError
from fcnwild.data.class_stats import (
    compute_class_stats,
    load_class_stats,
    save_class_stats,
)
from fcnwild.data.datasets import open_dataset


def test_stats_follow_the_definition(tmp_path):
    written = make_gta5(tmp_path, frames=6, size=(10, 16), seed=4)
    # One image is half 'unlabeled' (id 0): ignore pixels must not count in the denominator.
    ids = written["00003"]
    ids[:5] = 0
    write_palette(tmp_path / "labels/00003.png", ids)
    dataset = open_dataset(f"gta5:{tmp_path}")
    stats = compute_class_stats(dataset, workers=2, progress=False)

    road = stats.class_names.index("road")  # Cityscapes id 7
    fractions = []
    for frame_ids in written.values():
        labelled = np.isin(frame_ids, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
        if (frame_ids == 7).any():
            fractions.append((frame_ids == 7).sum() / labelled.sum())
    assert stats.image_counts[road] == len(fractions)
    assert stats.alpha[road] == pytest.approx(np.percentile(fractions, 10))
    assert stats.gamma[road] == pytest.approx(np.percentile(fractions, 90))
    assert stats.delta[road] == pytest.approx(np.mean(fractions))
    assert stats.num_images == 6 and stats.label_space == "cityscapes19"


def test_json_round_trip_and_load_errors(tmp_path):
    make_gta5(tmp_path, frames=4, size=(8, 8))
    stats = compute_class_stats(open_dataset(f"gta5:{tmp_path}"), progress=False)
    path = tmp_path / "stats.json"
    save_class_stats(stats, path)
    loaded = load_class_stats(path, 19)
    assert loaded.class_names == stats.class_names
    np.testing.assert_array_equal(loaded.gamma, stats.gamma)
    np.testing.assert_array_equal(loaded.image_counts, stats.image_counts)

    with pytest.raises(DatasetError, match="does not exist"):
        load_class_stats(tmp_path / "missing.json", 19)
    with pytest.raises(DatasetError, match="statistics are for 19 classes .* the net has 16"):
        load_class_stats(path, 16)
    data = json.loads(path.read_text())
    data["delta"][2] = data["gamma"][2] + 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="class 'building': inconsistent bounds"):
        load_class_stats(path, 19)
    data["alpha"] = data["alpha"][:5]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="'alpha' has 5 entries"):
        load_class_stats(path, 19)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON file"):
        load_class_stats(path, 19)


def test_skewed_class_gets_delta_clipped_into_the_bounds(tmp_path):
    # Nineteen images with 1/64 'car' and one all 'car': the mean exceeds the 90th percentile.
    make_skewed_car_gta5(tmp_path)
    with pytest.warns(UserWarning, match="outside .* for car"):
        stats = compute_class_stats(open_dataset(f"gta5:{tmp_path}"), progress=False)
    car = stats.class_names.index("car")
    assert stats.delta[car] == stats.gamma[car] == pytest.approx(1 / 64)
    assert stats.delta_clipped == ("car",)
    save_class_stats(stats, tmp_path / "s.json")
    assert load_class_stats(tmp_path / "s.json", 19).delta_clipped == ("car",)
