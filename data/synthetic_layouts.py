"""The synthetic benchmark written out in the real datasets' layouts, to rehearse the
real-data recipe (``gta5:`` source, ``cityscapes:`` target) without the real data.

The source domain becomes a GTA5 tree (``images/NNNNN.png``, ``labels/NNNNN.png`` as
palette PNGs of Cityscapes label ids), the target domain a Cityscapes tree
(``leftImg8bit/{train,val}/<city>/<city>_000000_NNNNNN_leftImg8bit.png`` and
``gtFine/.../*_gtFine_labelIds.png``), at any resolution: GTA5's 1914x1052 and
Cityscapes' 2048x1024 for the full-size rehearsal.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from fcnwild.data.images import write_png
from fcnwild.data.labels import CITYSCAPES_ID_TO_TRAIN
from fcnwild.data.synthetic import ShiftConfig, generate_split

GTA5_SIZE = (1052, 1914)          # (height, width)
CITYSCAPES_SIZE = (1024, 2048)
# A train id back to its Cityscapes label id; ignored pixels become 0 ('unlabeled').
_TRAIN_TO_LABEL_ID = np.zeros(256, np.uint8)
for _label_id, _train_id in CITYSCAPES_ID_TO_TRAIN.items():
    _TRAIN_TO_LABEL_ID[_train_id] = _label_id
CITIES = {"train": "aachen", "val": "frankfurt"}


def write_real_layouts(root: str | Path, config: ShiftConfig,
                       source_size: tuple[int, int] | None = None,
                       target_size: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """Write ``root/GTA5`` (the source_train split) and ``root/cityscapes`` (target_train
    as train, target_val as val), each at its size (default the config's); returns both
    roots."""
    root = Path(root)
    gta5, cityscapes = root / "GTA5", root / "cityscapes"
    source = _generate(config, "source_train", source_size)
    for i, (image, label) in enumerate(zip(*source), start=1):
        write_png(gta5 / "images" / f"{i:05d}.png", image, rgb=True)
        _write_palette(gta5 / "labels" / f"{i:05d}.png", _TRAIN_TO_LABEL_ID[label])
    for split, name in (("train", "target_train_labelled"), ("val", "target_val")):
        city = CITIES[split]
        for i, (image, label) in enumerate(zip(*_generate(config, name, target_size))):
            stem = f"{city}_000000_{i:06d}"
            write_png(cityscapes / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                      image, rgb=True)
            write_png(cityscapes / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                      _TRAIN_TO_LABEL_ID[label])
    return gta5, cityscapes


def _generate(config: ShiftConfig, split: str, size: tuple[int, int] | None):
    if size is not None:
        config = replace(config, height=size[0], width=size[1])
    images, labels, _ = generate_split(config, split)
    return images, labels


def _write_palette(path: Path, ids: np.ndarray) -> None:
    """GTA5's label files: palette PNGs whose indices are the label ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(ids), mode="P")
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8)))
    image.save(path)
