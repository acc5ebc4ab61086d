"""The synthetic domain-shift benchmark: determinism, labels, shift knobs, splits and the cache."""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest

from fcnwild.base.errors import DatasetError
from fcnwild.data import synthetic
from fcnwild.data.base import Sample
from fcnwild.data.synthetic import (
    BENCHMARK_TRAIN_IDS,
    ShiftConfig,
    config_hash,
    generate_split,
    open_synthetic,
    shift_config_from_dict,
    shift_parameters,
)
from fcnwild.data.synthetic_render import Appearance, render_scene
from fcnwild.data.synthetic_scene import CLASS_IDS, Part, SceneLayout, compose_scene


def tiny(**changes) -> ShiftConfig:
    return ShiftConfig(**{"height": 32, "width": 64, "n_source_train": 4, "n_target_train": 3,
                          "n_target_val": 2, **changes})


def class_fraction(labels: np.ndarray, name: str) -> float:
    return float((labels == CLASS_IDS[name]).mean())


def layout_labels(layout: SceneLayout, n: int = 40) -> np.ndarray:
    return np.stack([compose_scene(np.random.default_rng(i), layout, 48, 96).label for i in range(n)])


def test_same_seed_same_pixels_other_seed_or_split_other_pixels():
    images, labels, names = generate_split(tiny(), "source_train")
    again_images, again_labels, again_names = generate_split(tiny(), "source_train")
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    assert names == again_names
    other_images, other_labels, _ = generate_split(tiny(seed=1), "source_train")
    assert not np.array_equal(images, other_images) and not np.array_equal(labels, other_labels)
    val_images, _, _ = generate_split(tiny(), "target_val")
    assert not np.array_equal(images[:2], val_images)
    # Images are drawn per index, so a bigger split starts with the same images.
    bigger, _, _ = generate_split(tiny(n_source_train=6), "source_train")
    assert np.array_equal(bigger[:4], images)


def test_labels_are_benchmark_train_ids_and_the_street_classes_occur():
    _, labels, _ = generate_split(tiny(n_source_train=30, height=64, width=128), "source_train")
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(BENCHMARK_TRAIN_IDS) | {255}
    for name in ("road", "sidewalk", "building", "vegetation", "sky", "car", "pole"):
        assert class_fraction(labels, name) > 0, name
    # Ground below, sky above.
    assert class_fraction(labels[:, -4:], "sky") == 0
    assert class_fraction(labels[:, :4], "road") == 0


def test_splits_read_like_dataset_readers_and_target_train_hides_labels(tmp_path):
    config = tiny()
    source = open_synthetic("source_train", config, tmp_path)
    target = open_synthetic("target_train", config, tmp_path)
    oracle = open_synthetic("target_train_labelled", config, tmp_path)
    sample = source[0]
    assert isinstance(sample, Sample)
    assert sample.image.shape == (32, 64, 3) and sample.image.dtype == np.uint8
    assert sample.label.shape == (32, 64) and source.labelled
    assert len(source) == 4 and len(target) == 3
    assert target.labels is None and not target.labelled
    assert all(target[i].label is None for i in range(len(target)))
    with np.load(target.root / "target_train.npz") as f:
        assert "labels" not in f.files
    # The oracle split is the same images with their labels.
    assert np.array_equal(oracle.images, target.images) and oracle.labelled
    assert oracle.names() == target.names()
    assert source.label_space.num_classes == 19


def test_bad_splits_sizes_styles_and_configs_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown synthetic split"):
        open_synthetic("target_test", tiny(), tmp_path)
    with pytest.raises(DatasetError, match="non-negative"):
        tiny(seed=-1)
    with pytest.raises(DatasetError, match="no colour for .*sidewalk"):
        Appearance(palette={"road": (0, 0, 0)})
    with pytest.raises(DatasetError, match="season_whiten"):
        Appearance(season_whiten=1.5)
    with pytest.raises(DatasetError, match="not a synthetic shift configuration"):
        shift_config_from_dict({"source": {}, "target": {}})


def test_unwritable_cache_is_a_dataset_error_naming_the_folder(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(DatasetError, match="cannot write the synthetic benchmark cache") as err:
        open_synthetic("target_val", tiny(), blocker)
    assert str(blocker) in str(err.value)


def test_dataset_spec_factory_opens_a_seeded_split(tmp_path):
    split = synthetic.synthetic_dataset(str(tmp_path), "target_val", seed="0")
    assert split.root == synthetic.cache_dir_for(ShiftConfig(), tmp_path)
    assert len(split) == ShiftConfig().n_target_val and split.labelled
    with pytest.raises(DatasetError, match="seed"):
        synthetic.synthetic_dataset(str(tmp_path), "target_val", seed="x")
    with pytest.raises(DatasetError, match="needs a split"):
        synthetic.synthetic_dataset(str(tmp_path), None)


def test_season_whiten_brightens_road_and_sidewalk_and_makes_them_alike():
    road_gap, road_light = [], []
    for whiten in (0.0, 0.9):
        road, walk = [], []
        for i in range(6):
            scene = compose_scene(np.random.default_rng(i), SceneLayout(), 48, 96)
            image = render_scene(np.random.default_rng(100 + i), scene,
                                 Appearance(season_whiten=whiten, noise_sigma=0.0)).astype(np.float64)
            road.append(image[scene.label == CLASS_IDS["road"]].mean(0))
            walk.append(image[scene.label == CLASS_IDS["sidewalk"]].mean(0))
        road, walk = np.mean(road, 0), np.mean(walk, 0)
        road_gap.append(np.abs(road - walk).sum())
        road_light.append((road.mean(), walk.mean()))
    assert road_light[1][0] > road_light[0][0] + 50 and road_light[1][1] > road_light[0][1]
    assert road_gap[1] < 0.3 * road_gap[0]


def test_wheel_tracks_are_bare_road_under_snow_and_leave_the_scene_as_drawn():
    bare, tracked = SceneLayout(), SceneLayout(wheel_track_width=0.025)
    snow = Appearance(season_whiten=0.7, noise_sigma=0.0)
    track_light, snowy_light = [], []
    for i in range(6):
        plain = compose_scene(np.random.default_rng(i), bare, 48, 96)
        scene = compose_scene(np.random.default_rng(i), tracked, 48, 96)
        # Same random draws, same labels: only road pixels gain the track part.
        assert np.array_equal(plain.label, scene.label)
        track = scene.part == Part.TRACK
        assert track.any() and not (plain.part == Part.TRACK).any()
        assert (scene.label[track] == CLASS_IDS["road"]).all()
        assert np.array_equal(scene.part[~track], plain.part[~track])
        image = render_scene(np.random.default_rng(100 + i), scene, snow).mean(-1)
        snowy_road = (scene.label == CLASS_IDS["road"]) & (scene.part == Part.NONE)
        track_light.append(image[track & (np.arange(48) > 40)[:, None]].mean())
        snowy_light.append(image[snowy_road].mean())
    # Traffic keeps the tracks clear: they stay as dark as bare asphalt while snow whitens the rest.
    assert np.mean(track_light) < np.mean(snowy_light) - 60


@pytest.mark.parametrize("knob, low, high, cls", [
    ("car_density", 0.0, 6.0, "car"),
    ("person_density", 0.0, 6.0, "person"),
    ("vegetation_amount", 0.0, 0.9, "vegetation"),
    ("road_width", 0.6, 1.4, "road"),
    ("terrain_prob", 0.0, 1.0, "terrain"),
    ("fence_prob", 0.0, 1.0, "fence"),
])
def test_layout_knobs_change_class_frequencies(knob, low, high, cls):
    few = class_fraction(layout_labels(SceneLayout(**{knob: low})), cls)
    many = class_fraction(layout_labels(SceneLayout(**{knob: high})), cls)
    assert many > 1.5 * few + 1e-3


def test_appearance_knobs_change_pixels_not_labels():
    scene = compose_scene(np.random.default_rng(0), SceneLayout(), 48, 96)
    plain = render_scene(np.random.default_rng(1), scene, Appearance(noise_sigma=0.0)).astype(np.float64)
    dark = render_scene(np.random.default_rng(1), scene, Appearance(noise_sigma=0.0, brightness=0.6))
    blurred = render_scene(np.random.default_rng(1), scene, Appearance(noise_sigma=0.0, blur_sigma=1.5))
    noisy = render_scene(np.random.default_rng(1), scene, Appearance(noise_sigma=12.0)).astype(np.float64)
    assert dark.mean() < 0.8 * plain.mean()
    # Blur lowers the energy of horizontal pixel differences; noise raises their spread.
    grad = lambda im: np.abs(np.diff(im.astype(np.float64), axis=1)).mean()
    assert grad(blurred) < 0.8 * grad(plain)
    assert (noisy - plain).std() > 8


def test_default_target_differs_from_source_in_look_and_frequencies():
    config = tiny(n_source_train=20, n_target_val=20, height=48, width=96)
    source_images, source_labels, _ = generate_split(config, "source_train")
    target_images, target_labels, _ = generate_split(config, "target_val")
    assert class_fraction(target_labels, "building") > class_fraction(source_labels, "building") + 0.03
    assert class_fraction(target_labels, "vegetation") < class_fraction(source_labels, "vegetation") - 0.03
    road = lambda images, labels: images[labels == CLASS_IDS["road"]].mean()
    assert road(target_images, target_labels) > road(source_images, source_labels) + 30


def test_shift_parameters_are_json_and_round_trip():
    config = tiny(target=dataclasses.replace(synthetic.winter_city(), name="other"))
    params = json.loads(json.dumps(shift_parameters(config)))
    assert params["config_hash"] == config_hash(config)
    assert params["config"]["target"]["look"]["season_whiten"] == config.target.look.season_whiten
    rebuilt = shift_config_from_dict(params["config"])
    assert rebuilt == config and config_hash(rebuilt) == config_hash(config)
    assert config_hash(tiny(seed=3)) != config_hash(tiny())


def test_cache_is_reused_without_regenerating(tmp_path, monkeypatch):
    config = tiny()
    first = open_synthetic("target_val", config, tmp_path)
    path = first.root / "target_val.npz"
    stamp = path.stat().st_mtime_ns

    def must_not_run(*args):
        raise AssertionError("regenerated although the cache is valid")
    monkeypatch.setattr(synthetic, "generate_split", must_not_run)
    second = open_synthetic("target_val", config, tmp_path)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert path.stat().st_mtime_ns == stamp


def test_cache_root_follows_fcnwild_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNWILD_CACHE", str(tmp_path))
    split = open_synthetic("target_val", tiny())
    assert split.root == tmp_path / "synthetic" / config_hash(tiny())
    assert (split.root / "target_val.npz").is_file()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "stale_hash", "wrong_shape"])
def test_corrupt_cache_is_detected_and_regenerated(tmp_path, damage):
    config = tiny()
    good = open_synthetic("source_train", config, tmp_path)
    path = good.root / "source_train.npz"
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
        path.write_bytes(bytes(data))
    else:
        images = good.images[:2] if damage == "wrong_shape" else good.images
        digest = "0" * 16 if damage == "stale_hash" else config_hash(config)
        np.savez_compressed(path, images=images, labels=good.labels[: len(images)],
                            names=np.asarray(good.names()[: len(images)]), config_hash=np.asarray(digest))
    with pytest.warns(UserWarning, match="synthetic cache"):
        again = open_synthetic("source_train", config, tmp_path)
    assert np.array_equal(again.images, good.images) and np.array_equal(again.labels, good.labels)
    with np.load(path) as f:  # rewritten whole
        assert str(f["config_hash"]) == config_hash(config)


def test_interrupted_generation_leaves_no_cache_file(tmp_path, monkeypatch):
    config = tiny()
    real_savez = np.savez_compressed

    def killed(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt
    monkeypatch.setattr(synthetic.np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        open_synthetic("target_val", config, tmp_path)
    directory = synthetic.cache_dir_for(config, tmp_path)
    assert not (directory / "target_val.npz").exists()
    assert not list(directory.glob("*.tmp"))
    monkeypatch.setattr(synthetic.np, "savez_compressed", real_savez)
    assert len(open_synthetic("target_val", config, tmp_path)) == 2


def test_zip_member_checksums_catch_flipped_pixels(tmp_path):
    # The cache relies on the zip CRC to notice silent corruption inside an array.
    config = tiny()
    good = open_synthetic("target_val", config, tmp_path)
    path = good.root / "target_val.npz"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images.npy")
    data = bytearray(path.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        again = open_synthetic("target_val", config, tmp_path)
    assert np.array_equal(again.images, good.images)
