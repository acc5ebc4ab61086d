"""GTA5 ("Playing for Data", Richter et al. 2016) in its published layout:

    ROOT/images/NNNNN.png   ROOT/labels/NNNNN.png   [ROOT/split.mat]

Labels are palette PNGs whose indices are Cityscapes label ids. ``split.mat``
holds ``trainIds``, ``valIds`` and ``testIds`` (1-based frame numbers; the
loader of jhoffman/cycada reads it the same way). The public set has frames
whose label is missing or has another size than the image (cycada keeps a
blacklist of five in val); they are skipped and counted in a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.io

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import Entry, SegmentationDataset, find_files, require_dir
from fcnwild.data.images import image_size
from fcnwild.data.labels import (
    CITYSCAPES_ID_TO_TRAIN,
    CITYSCAPES_LABEL_IDS,
    cityscapes_space_lut,
    get_label_space,
)

SPLITS = ("train", "val", "test")


def _split_frames(root: Path, split: str) -> set[int]:
    path = root / "split.mat"
    if not path.is_file():
        raise DatasetError(f"split '{split}' asked for but split.mat is missing "
                           f"(leave the split out to use every frame)", file=path)
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read split.mat: {err}", file=path) from None
    key = f"{split}Ids"
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"no '{key}' in split.mat; found {', '.join(found)}", file=path)
    return {int(i) for i in np.asarray(mat[key]).ravel()}


class GTA5Dataset(SegmentationDataset):
    family = "gta5"

    def __init__(self, root: str | Path, split: str | None = None, *,
                 label_space: str = "cityscapes19") -> None:
        root = Path(root)
        image_dir = require_dir(root / "images", "images (expected images/NNNNN.png)")
        label_dir = require_dir(root / "labels", "labels (expected labels/NNNNN.png)")
        images = find_files(image_dir, (".png",))
        if split not in (None, "all"):
            if split not in SPLITS:
                raise DatasetError(f"unknown GTA5 split '{split}'; expected one of {', '.join(SPLITS)}")
            frames = _split_frames(root, split)
            images = [p for p in images if p.stem.isdigit() and int(p.stem) in frames]
        entries, no_label, bad_size = [], [], []
        for image in images:
            label = label_dir / image.name
            if not label.is_file():
                no_label.append(image.name)
            elif image_size(label) != image_size(image):
                bad_size.append(image.name)
            else:
                entries.append(Entry(image.stem, image, label))
        if no_label or bad_size:
            warnings.warn(
                f"GTA5 at {root}: skipped {len(no_label)} images without a label"
                f"{' (e.g. ' + ', '.join(no_label[:3]) + ')' if no_label else ''} and "
                f"{len(bad_size)} whose label size differs from the image"
                f"{' (e.g. ' + ', '.join(bad_size[:3]) + ')' if bad_size else ''}; "
                f"kept {len(entries)} of {len(images)}", stacklevel=2)
        space = get_label_space(label_space)
        super().__init__(root, split, entries, space, cityscapes_space_lut(space, CITYSCAPES_ID_TO_TRAIN),
                         CITYSCAPES_LABEL_IDS)
