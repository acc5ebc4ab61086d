"""Small dataset trees in the real on-disk layouts, written by the data tests.

Each writer returns what it wrote (label ids per image) so tests can check the
readers' mapping against the ids themselves.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def write_grey(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(path)


def write_palette(path: Path, ids: np.ndarray) -> None:
    """A palette PNG whose indices are the ids, as GTA5 stores its labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    rng = np.random.default_rng(0)
    image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    image.save(path)


def write_synthia_label(path: Path, class_ids: np.ndarray, instance_ids: np.ndarray) -> None:
    """16-bit-per-channel RGB PNG: R = class id, G = instance id, B = 0 (SYNTHIA's GT/LABELS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.zeros(class_ids.shape + (3,), dtype=np.uint16)
    bgr[:, :, 2] = class_ids
    bgr[:, :, 1] = instance_ids
    assert cv2.imwrite(str(path), bgr)


def random_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_cityscapes(root: Path, split: str = "val", cities: dict[str, int] | None = None,
                    size: tuple[int, int] = (16, 24), seed: int = 0) -> dict[str, np.ndarray]:
    """leftImg8bit + gtFine for ``cities`` ({city: number of frames}); returns {name: label ids}."""
    rng = np.random.default_rng(seed)
    written = {}
    for city, frames in (cities or {"aachen": 2, "bremen": 1}).items():
        for frame in range(frames):
            stem = f"{city}_{frame:06d}_{19 + frame:06d}"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_rgb(rng, *size))
            ids = rng.integers(0, 34, size, dtype=np.uint8)
            write_grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            written[f"{city}/{stem}_leftImg8bit"] = ids
    return written


def make_gta5(root: Path, frames: int = 5, size: tuple[int, int] = (12, 20), seed: int = 0,
              missing_label: tuple[int, ...] = (), wrong_size: tuple[int, ...] = (),
              split: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """images/ and labels/ (palette PNGs of Cityscapes ids) for frames 1..frames; optional split.mat."""
    rng = np.random.default_rng(seed)
    written = {}
    for frame in range(1, frames + 1):
        name = f"{frame:05d}"
        write_rgb(root / "images" / f"{name}.png", random_rgb(rng, *size))
        if frame in missing_label:
            continue
        label_size = (size[0] + 2, size[1]) if frame in wrong_size else size
        ids = rng.integers(0, 34, label_size, dtype=np.uint8)
        write_palette(root / "labels" / f"{name}.png", ids)
        written[name] = ids
    if split is not None:
        scipy.io.savemat(root / "split.mat", {f"{k}Ids": np.asarray(v, dtype=np.float64)[:, None]
                                              for k, v in split.items()})
    return written


def make_skewed_car_gta5(root: Path) -> None:
    """Twenty 8x8 GTA5 frames: nineteen with 1/64 'car' (id 26, on road) and one all 'car',
    so that car's mean size exceeds its 90th percentile and the stats clip it."""
    for frame in range(1, 21):
        ids = np.full((8, 8), 7, np.uint8)
        ids[0, 0] = 26
        if frame == 20:
            ids[:] = 26
        write_palette(root / "labels" / f"{frame:05d}.png", ids)
        write_palette(root / "images" / f"{frame:05d}.png", ids)


def make_synthia_rand(root: Path, frames: int = 3, size: tuple[int, int] = (10, 14),
                      seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    written = {}
    for frame in range(frames):
        name = f"{frame:07d}"
        write_rgb(root / "RGB" / f"{name}.png", random_rgb(rng, *size))
        ids = rng.integers(0, 23, size).astype(np.uint16)
        write_synthia_label(root / "GT" / "LABELS" / f"{name}.png", ids,
                            rng.integers(0, 60000, size).astype(np.uint16))
        written[name] = ids
    return written


def make_synthia_seqs(root: Path, folders: dict[str, int], size: tuple[int, int] = (10, 14),
                      seed: int = 0) -> dict[str, np.ndarray]:
    """{"SYNTHIA-SEQS-01-SUMMER": frames, ...}; writes the front camera and, as a decoy, a rear one."""
    rng = np.random.default_rng(seed)
    written = {}
    for folder, frames in folders.items():
        for camera in ("Omni_F", "Omni_B"):
            for frame in range(frames):
                name = f"{frame:06d}"
                write_rgb(root / folder / "RGB" / "Stereo_Left" / camera / f"{name}.png", random_rgb(rng, *size))
                ids = rng.integers(0, 16, size).astype(np.uint16)
                write_synthia_label(root / folder / "GT" / "LABELS" / "Stereo_Left" / camera / f"{name}.png",
                                    ids, np.zeros(size, np.uint16))
                if camera == "Omni_F":
                    written[f"{folder}/{name}"] = ids
    return written
