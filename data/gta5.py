"""GTA5 ("Playing for Data", Richter et al. 2016) in its published layout:

    ROOT/images/NNNNN.png   ROOT/labels/NNNNN.png   [ROOT/split.mat]

Labels are palette PNGs whose indices are Cityscapes label ids. ``split.mat``
holds ``trainIds``, ``valIds`` and ``testIds`` (1-based frame numbers; the
loader of jhoffman/cycada reads it the same way). The public set has frames
whose label is missing or has another size than the image (cycada keeps a
blacklist of five in val). Opening lists every such frame in one error;
``skip_defective=true`` (``gta5:ROOT?skip_defective=true``) leaves them out
instead, and the dataset's description says how many and which.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import (
    Entry,
    SegmentationDataset,
    find_files,
    parse_flag,
    require_dir,
    size_mismatches,
)
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
                 label_space: str = "cityscapes19", skip_defective: bool | str = False) -> None:
        root = Path(root)
        image_dir = require_dir(root / "images", "images (expected images/NNNNN.png)")
        label_dir = require_dir(root / "labels", "labels (expected labels/NNNNN.png)")
        images = find_files(image_dir, (".png",))
        if split not in (None, "all"):
            if split not in SPLITS:
                raise DatasetError(f"unknown GTA5 split '{split}'; expected one of {', '.join(SPLITS)}")
            frames = _split_frames(root, split)
            images = [p for p in images if p.stem.isdigit() and int(p.stem) in frames]
        paired = [Entry(image.stem, image, label_dir / image.name) for image in images]
        no_label = [e for e in paired if not e.label.is_file()]
        mismatched = size_mismatches([e for e in paired if e.label.is_file()])
        self.skipped = [f"{e.label} is missing" for e in no_label] + [m.describe() for m in mismatched]
        if self.skipped and not parse_flag(skip_defective, "skip_defective"):
            raise DatasetError(
                f"{len(no_label)} of {len(images)} images have no label file and {len(mismatched)} "
                f"labels differ in size from their image (pass gta5:ROOT?skip_defective=true to "
                f"leave these frames out):\n" + "\n".join(f"  {line}" for line in self.skipped),
                file=root)
        defective = {e.name for e in no_label} | {m.entry.name for m in mismatched}
        entries = [e for e in paired if e.name not in defective]
        space = get_label_space(label_space)
        super().__init__(root, split, entries, space, cityscapes_space_lut(space, CITYSCAPES_ID_TO_TRAIN),
                         CITYSCAPES_LABEL_IDS, check_sizes=False)

    def __repr__(self) -> str:
        if not self.skipped:
            return super().__repr__()
        return (f"{super().__repr__()}; left out {len(self.skipped)} defective frame(s):\n"
                + "\n".join(f"  {line}" for line in self.skipped))
