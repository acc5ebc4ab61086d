"""The embedded synthetic domain-shift benchmark: street scenes in a source and a target style.

fcnwild generates it itself, deterministically from a seed, and caches it on
first use, so ``fcnwild demo`` needs no download. Both domains draw the same
kind of street (road, sidewalk, buildings, trees, poles, signs, lights, cars,
people) labelled with Cityscapes trainIds; they differ as the paper's domains
do, in appearance (palette, illumination, texture, noise, blur, snow that
whitens road and sidewalk alike in the target, where only wheel tracks show the
asphalt) and in class frequencies and layout. What carries across is shape,
layout and context, which is what adaptation can exploit.

Classes (Cityscapes trainIds): road 0, sidewalk 1, building 2, fence 4, pole 5,
traffic light 6, traffic sign 7, vegetation 8, terrain 9, sky 10, person 11,
car 13. Wall, rider, truck, bus, train, motorcycle and bicycle never occur and
score as absent. Every image is drawn from its own PCG64 stream seeded by
(seed, split, index), with arithmetic alone (see synthetic_render), so a seed
gives the same pixels on any machine with the same numpy.

Splits:
  ``source_train``           labelled source images (the only labels training may see);
  ``target_train``           the same target images unlabelled: labels are not even loaded;
  ``target_val``             labelled target images for evaluation only, never for training or model selection;
  ``target_train_labelled``  ``target_train`` with its labels, for the target oracle upper bound only;
                             the adaptation stages never use it.

Cache: each split is one compressed ``.npz`` under
``<root>/synthetic/<config hash>/`` with root = ``cache_dir`` argument, else
``$FCNWILD_CACHE``, else ``~/.cache/fcnwild``. One file per split makes the
write atomic (temp file + rename) and the read a single CRC-checked load, and
loads ~10x faster than hundreds of PNGs; the benchmark is small enough to
hold in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fcnwild.base.atomic import atomic_write
from fcnwild.base.cache import cache_root
from fcnwild.base.errors import DatasetError
from fcnwild.data.base import Entry, SegmentationDataset
from fcnwild.data.labels import CITYSCAPES19
from fcnwild.data.synthetic_render import Appearance, render_scene, sunny_palette
from fcnwild.data.synthetic_scene import (
    CLASS_IDS,
    IGNORE_LABEL,
    SceneLayout,
    compose_scene,
)

# Bump whenever generation changes what a seed draws, so stale caches are not reused.
GENERATOR_VERSION = 2
SPLITS = ("source_train", "target_train", "target_val", "target_train_labelled")
# Per-image seeds come from (seed, split stream, index); the two target_train views share a stream.
_STREAM = {"source_train": 0, "target_train": 1, "target_train_labelled": 1, "target_val": 2}
BENCHMARK_TRAIN_IDS = tuple(sorted(CLASS_IDS.values()))


@dataclass(frozen=True)
class DomainStyle:
    """One domain: what its streets contain (layout) and how they look (appearance)."""
    name: str = "sunny_city"
    layout: SceneLayout = field(default_factory=SceneLayout)
    look: Appearance = field(default_factory=Appearance)


def sunny_city() -> DomainStyle:
    """Default source: a bright summer city with wide leafy streets and light traffic."""
    return DomainStyle("sunny_city", SceneLayout(), Appearance())


def winter_city() -> DomainStyle:
    """Default target: an overcast winter city, greyer, with snow covering road and sidewalk
    alike; taller buildings, fewer trees, a higher horizon, narrower roads and wider
    sidewalks. Objects (cars, people, poles) are as frequent as in the source.

    Traffic keeps two dark wheel tracks per lane clear of snow; the rest of the road is as
    pale as the sidewalk, which is pale in the source too. So a source-trained net finds
    road only in the tracks and calls the snowed-over road sidewalk: a category-level error
    that the source's class sizes (road large, sidewalk small) expose, while every target
    image still shows some road for the image-level labels of category-specific adaptation.
    """
    palette = {**sunny_palette(), "building": (140, 120, 115), "vegetation": (60, 100, 50),
               "sky": (130, 160, 210), "terrain": (140, 150, 100), "fence": (100, 95, 90),
               "haze": (205, 210, 215), "traffic_sign": (210, 160, 40)}
    layout = SceneLayout(horizon=0.44, road_width=0.95, sidewalk_width=0.32, building_height=1.7,
                         vegetation_amount=0.28, terrain_prob=0.25, fence_prob=0.3,
                         wheel_track_width=0.025)
    look = Appearance(palette=palette, palette_jitter=0.2, brightness=0.9, contrast=0.85,
                      colour_cast=(0.92, 0.97, 1.08), illumination_gradient=0.05, texture_strength=0.2,
                      texture_scale=4.0, noise_sigma=5.0, blur_sigma=0.8, season_whiten=0.7)
    return DomainStyle("winter_city", layout, look)


@dataclass(frozen=True)
class ShiftConfig:
    """Everything that determines the benchmark's pixels: both styles, sizes and the seed."""
    source: DomainStyle = field(default_factory=sunny_city)
    target: DomainStyle = field(default_factory=winter_city)
    height: int = 64
    width: int = 128
    n_source_train: int = 500
    n_target_train: int = 500
    n_target_val: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = (self.n_source_train, self.n_target_train, self.n_target_val, self.seed)
        if self.height < 8 or self.width < 8 or min(sizes) < 0:
            raise DatasetError(f"synthetic benchmark needs height, width >= 8 and non-negative counts and seed; "
                               f"got {self.height}x{self.width}, counts {sizes[:3]}, seed {self.seed}")

    def split_size(self, split: str) -> int:
        return {"source_train": self.n_source_train, "target_train": self.n_target_train,
                "target_train_labelled": self.n_target_train, "target_val": self.n_target_val}[split]


def shift_config_from_dict(values: dict[str, Any]) -> ShiftConfig:
    """Rebuild a ShiftConfig from ``shift_parameters(...)["config"]`` (e.g. read back from results.json)."""
    def style(d: dict[str, Any]) -> DomainStyle:
        look = dict(d["look"])
        look["palette"] = {k: tuple(v) for k, v in look["palette"].items()}
        for key in ("colour_cast", "snow_colour"):
            look[key] = tuple(look[key])
        return DomainStyle(d["name"], SceneLayout(**d["layout"]), Appearance(**look))
    try:
        rest = {k: v for k, v in values.items() if k not in ("source", "target")}
        return ShiftConfig(source=style(values["source"]), target=style(values["target"]), **rest)
    except (KeyError, TypeError, AttributeError) as err:
        raise DatasetError(f"not a synthetic shift configuration ({type(err).__name__}: {err})") from None


def config_hash(config: ShiftConfig) -> str:
    text = json.dumps({"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(config)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shift_parameters(config: ShiftConfig | None = None) -> dict[str, Any]:
    """The benchmark's parameters as a JSON-serialisable dict (for results.json)."""
    config = config or ShiftConfig()
    return {"generator_version": GENERATOR_VERSION, "config_hash": config_hash(config),
            "classes": dict(CLASS_IDS), "config": dataclasses.asdict(config)}


def _split_style(config: ShiftConfig, split: str) -> DomainStyle:
    return config.source if split == "source_train" else config.target


def generate_split(config: ShiftConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, H, W, 3) uint8 RGB, labels (N, H, W) uint8 trainIds, names) of one split, uncached."""
    _check_split(split)
    style, n = _split_style(config, split), config.split_size(split)
    images = np.empty((n, config.height, config.width, 3), np.uint8)
    labels = np.empty((n, config.height, config.width), np.uint8)
    for i in range(n):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, _STREAM[split], i])))
        scene = compose_scene(rng, style.layout, config.height, config.width)
        images[i] = render_scene(rng, scene, style.look)
        labels[i] = scene.label
    return images, labels, [f"{_stream(split)}_{i:05d}" for i in range(n)]


def cache_dir_for(config: ShiftConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or cache_root()) / "synthetic" / config_hash(config)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown synthetic split '{split}', expected one of {', '.join(SPLITS)}")


_VALID_LABEL = np.zeros(256, bool)
_VALID_LABEL[list(BENCHMARK_TRAIN_IDS) + [IGNORE_LABEL]] = True


def _read_cached(path: Path, key: str, shape: tuple[int, ...], digest: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(array under ``key``, names) if ``path`` holds a complete file for this config, else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored, array, names = str(f["config_hash"]), f[key], f["names"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        warnings.warn(f"{path}: unreadable synthetic cache ({err}); regenerating", stacklevel=3)
        return None
    problem = None
    if stored != digest:
        problem = f"config hash {stored}, expected {digest}"
    elif array.shape != shape or array.dtype != np.uint8 or names.shape != shape[:1]:
        problem = f"{key} {array.dtype}{array.shape}, expected uint8{shape}"
    elif key == "labels" and not _VALID_LABEL[np.bincount(array.ravel(), minlength=256) > 0].all():
        problem = "label values outside the benchmark's trainIds"
    if problem:
        warnings.warn(f"{path}: stale or corrupt synthetic cache ({problem}); regenerating", stacklevel=3)
        return None
    return array, names


def _write_cached(path: Path, names: list[str], digest: str, **arrays: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays, names=np.asarray(names), config_hash=np.asarray(digest))


def _stream(split: str) -> str:
    """The split whose images ``split`` shows (the oracle split shows target_train's)."""
    return "target_train" if split == "target_train_labelled" else split


def _split_files(split: str, directory: Path) -> tuple[Path, Path]:
    """(file holding the split's images, file holding its labels)."""
    stream = _stream(split)
    # target_train keeps its labels in a separate file so the unlabelled split never loads them.
    label_name = "target_train_labels.npz" if stream == "target_train" else f"{stream}.npz"
    return directory / f"{stream}.npz", directory / label_name


def _load_or_generate(config: ShiftConfig, split: str, directory: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    digest, n = config_hash(config), config.split_size(split)
    image_shape = (n, config.height, config.width, 3)
    image_file, label_file = _split_files(split, directory)
    want_labels = split != "target_train"
    images = _read_cached(image_file, "images", image_shape, digest)
    labels = _read_cached(label_file, "labels", image_shape[:3], digest) if want_labels else None
    if images is not None and (labels is not None or not want_labels):
        return images[0], labels[0] if labels is not None else None, [str(s) for s in images[1]]
    generated_images, generated_labels, names = generate_split(config, split)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / "config.json", "w") as f:
            json.dump(shift_parameters(config), f, indent=1)
        if image_file == label_file:
            _write_cached(image_file, names, digest, images=generated_images, labels=generated_labels)
        else:
            _write_cached(label_file, names, digest, labels=generated_labels)
            _write_cached(image_file, names, digest, images=generated_images)
    except OSError as err:
        raise DatasetError(f"cannot write the synthetic benchmark cache ({err}); set FCNWILD_CACHE "
                           "or pass cache_dir to a writable folder", file=directory) from None
    return generated_images, generated_labels if want_labels else None, names


class SyntheticSplit(SegmentationDataset):
    """One split of the benchmark, read like any dataset: item ``i`` is a ``Sample``
    (RGB image, trainId label or None for ``target_train``, name) in the 19-class
    Cityscapes label space. ``images`` and ``labels`` (None for ``target_train``)
    are also exposed whole, (N, H, W, 3) and (N, H, W) uint8, for fast batching.
    """

    family = "synthetic"

    def __init__(self, split: str, config: ShiftConfig | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        _check_split(split)
        self.config = config or ShiftConfig()
        directory = cache_dir_for(self.config, cache_dir)
        self.images, self.labels, names = _load_or_generate(self.config, split, directory)
        image_file, label_file = _split_files(split, directory)
        entries = [Entry(name, image_file, label_file if self.labels is not None else None) for name in names]
        super().__init__(directory, split, entries, CITYSCAPES19, None)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def label(self, index: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[index]


def open_synthetic(split: str, config: ShiftConfig | None = None,
                   cache_dir: str | os.PathLike | None = None) -> SyntheticSplit:
    """Load ``split`` of the benchmark from the cache, generating and caching it on first use."""
    return SyntheticSplit(split, config, cache_dir)


def synthetic_dataset(root: str, split: str | None, *, seed: int | str = 0,
                      height: int | str | None = None, width: int | str | None = None,
                      images: int | str | None = None) -> SyntheticSplit:
    """Factory for dataset specs: ``synthetic:CACHE_ROOT?seed=1`` (``synthetic:default`` = the
    default cache); ``height``, ``width`` and ``images`` (per split) shrink or grow the
    default shift's benchmark."""
    if split is None:
        raise DatasetError(f"the synthetic benchmark needs a split, one of {', '.join(SPLITS)}")
    values = {}
    for name, value in (("seed", seed), ("height", height), ("width", width), ("images", images)):
        if value is None:
            continue
        try:
            values[name] = int(value)
        except ValueError:
            raise DatasetError(f"synthetic option {name}={value!r}: expected an integer") from None
    sizes = {key: values[key] for key in ("height", "width") if key in values}
    if "images" in values:
        sizes.update(n_source_train=values["images"], n_target_train=values["images"],
                     n_target_val=values["images"])
    config = ShiftConfig(seed=values.get("seed", 0), **sizes)
    return open_synthetic(split, config, None if root == "default" else root)
