"""SYNTHIA (Ros et al. 2016): the RAND-CITYSCAPES set and the video sequences.

SYNTHIA-RAND-CITYSCAPES:

    ROOT/RGB/NNNNNNN.png   ROOT/GT/LABELS/NNNNNNN.png

SYNTHIA-VIDEO-SEQUENCES, one folder per sequence and season:

    ROOT/SYNTHIA-SEQS-{NN}-{SEASON}/RGB/Stereo_Left/Omni_F/NNNNNN.png
    ROOT/SYNTHIA-SEQS-{NN}-{SEASON}/GT/LABELS/Stereo_Left/Omni_F/NNNNNN.png

Both store labels as 16-bit-per-channel RGB PNGs with the class id in the first
channel (the second holds instance ids). Of the eight cameras of the sequences
only Stereo_Left/Omni_F, the forward-looking one, resembles a dash-cam; it is
the only one read. A season (SUMMER, FALL, WINTER, SPRING, DAWN, ...) is one
domain, gathered over every sequence that has it (or the ``sequences`` given).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import (
    Entry,
    SegmentationDataset,
    find_files,
    relative_name,
    require_dir,
    split_list,
)
from fcnwild.data.images import read_label_channel
from fcnwild.data.labels import (
    SYNTHIA_RAND_ID_TO_TRAIN,
    SYNTHIA_RAND_LABEL_IDS,
    SYNTHIA_SEQS13,
    SYNTHIA_SEQS_ID_TO_TRAIN,
    SYNTHIA_SEQS_LABEL_IDS,
    cityscapes_space_lut,
    get_label_space,
    lut_from_mapping,
)

CAMERA = Path("Stereo_Left") / "Omni_F"
_SEQUENCE_DIR = re.compile(r"^SYNTHIA-SEQS-(\d+)-([A-Z]+)$")
_ID_RANGE = 1 << 16


def _pair_up(image_dir: Path, label_dir: Path, name_prefix: str, root: Path) -> list[Entry]:
    images = find_files(image_dir, (".png",))
    entries, missing = [], []
    for image in images:
        label = label_dir / image.relative_to(image_dir)
        if not label.is_file():
            missing.append(label)
        entries.append(Entry(name_prefix + relative_name(image, image_dir), image, label))
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(images)} images have no label file, e.g. "
            f"{', '.join(str(m.relative_to(root)) for m in missing[:3])}; matched "
            f"{len(images) - len(missing)} image/label pairs", file=root)
    return entries


def _all_split(family: str, split: str | None) -> None:
    if split not in (None, "all", "train"):
        # Both sets serve whole as adaptation sources, so 'train' means every frame too.
        raise DatasetError(f"{family} has no official '{split}' split; leave the split out "
                           f"(or use 'all') to read every frame")


class SynthiaRandDataset(SegmentationDataset):
    family = "synthia"

    def __init__(self, root: str | Path, split: str | None = None, *,
                 label_space: str = "cityscapes19") -> None:
        _all_split(self.family, split)
        root = Path(root)
        image_dir = require_dir(root / "RGB", "RGB (expected RGB/*.png)")
        label_dir = require_dir(root / "GT" / "LABELS", "GT/LABELS (expected GT/LABELS/*.png)")
        space = get_label_space(label_space)
        entries = _pair_up(image_dir, label_dir, "", root)
        super().__init__(root, split, entries, space,
                         cityscapes_space_lut(space, SYNTHIA_RAND_ID_TO_TRAIN, _ID_RANGE),
                         SYNTHIA_RAND_LABEL_IDS)

    def read_label_ids(self, path: Path) -> np.ndarray:
        return read_label_channel(path, 0)


class SynthiaSeqsDataset(SegmentationDataset):
    family = "synthia-seqs"

    def __init__(self, root: str | Path, split: str | None = None, *, season: str | None = None,
                 sequences: str | Sequence[str] | None = None) -> None:
        _all_split(self.family, split)
        root = Path(root)
        found: dict[str, list[tuple[str, Path]]] = {}
        for folder in sorted(p for p in require_dir(root, "dataset root").iterdir() if p.is_dir()):
            match = _SEQUENCE_DIR.match(folder.name)
            if match:
                found.setdefault(match.group(2), []).append((match.group(1), folder))
        if not found:
            raise DatasetError("no SYNTHIA-SEQS-<NN>-<SEASON> folders", file=root)
        if season is None or season.upper() not in found:
            raise DatasetError(f"{'no season given' if season is None else f'no season {season!r}'}; "
                               f"seasons present: {', '.join(s.lower() for s in sorted(found))}", file=root)
        wanted = split_list(sequences)
        if wanted is not None and not all(w.isdigit() for w in wanted):
            raise DatasetError(f"sequences={','.join(wanted)}: expected sequence numbers such as 01,02")
        folders = [(seq, f) for seq, f in found[season.upper()]
                   if wanted is None or any(int(seq) == int(w) for w in wanted)]
        if not folders:
            present = ", ".join(seq for seq, _ in found[season.upper()])
            raise DatasetError(f"none of sequences {', '.join(wanted or [])} has season "
                               f"{season!r}; it is present in sequences {present}", file=root)
        entries = []
        for _, folder in folders:
            image_dir = require_dir(folder / "RGB" / CAMERA, f"RGB/{CAMERA.as_posix()} of {folder.name}")
            label_dir = require_dir(folder / "GT" / "LABELS" / CAMERA,
                                    f"GT/LABELS/{CAMERA.as_posix()} of {folder.name}")
            entries += _pair_up(image_dir, label_dir, folder.name + "/", root)
        self.season = season.upper()
        super().__init__(root, split, entries, SYNTHIA_SEQS13,
                         lut_from_mapping(SYNTHIA_SEQS_ID_TO_TRAIN, _ID_RANGE),
                         SYNTHIA_SEQS_LABEL_IDS)

    def read_label_ids(self, path: Path) -> np.ndarray:
        return read_label_channel(path, 0)
