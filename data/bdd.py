"""Berkeley Deep Drive style sets, and plain folders of unlabelled images.

BDD (the BDD100K segmentation layout, which the paper's BDDS dash-cam frames
share):

    ROOT/images/{split}/NAME.jpg
    ROOT/labels/{split}/NAME_train_id.png  or  NAME.png       (optional)

Labels are in the Cityscapes label space, stored as trainIds (BDD100K's
``*_train_id.png``; ``label_encoding=label_id`` reads Cityscapes label ids
instead). Without a labels/{split} folder the split is unlabelled, as the
adaptation targets are.

A folder (``folder:ROOT``) is every image below ROOT, unlabelled.
"""
from __future__ import annotations

from pathlib import Path

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import (
    Entry,
    SegmentationDataset,
    find_files,
    relative_name,
    require_dir,
)
from fcnwild.data.labels import (
    CITYSCAPES_ID_TO_TRAIN,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_NAMES,
    IGNORE,
    cityscapes_space_lut,
    get_label_space,
)

_ENCODINGS = {
    "train_id": {k: k for k in range(len(CITYSCAPES_NAMES))},
    "label_id": CITYSCAPES_ID_TO_TRAIN,
}
# What each encoding's PNGs may hold: trainIds 0..18 and 255 (ignore), or label ids.
_DECLARED = {
    "train_id": (*range(len(CITYSCAPES_NAMES)), IGNORE),
    "label_id": CITYSCAPES_LABEL_IDS,
}


class BDDDataset(SegmentationDataset):
    family = "bdd"

    def __init__(self, root: str | Path, split: str | None = "val", *,
                 label_encoding: str = "train_id", label_space: str = "cityscapes19") -> None:
        if label_encoding not in _ENCODINGS:
            raise DatasetError(f"label_encoding={label_encoding!r}: expected train_id or label_id")
        root = Path(root)
        split = split or "val"
        image_dir = require_dir(root / "images" / split, f"images/{split} (expected images/{split}/*.jpg)")
        label_dir = root / "labels" / split
        images = find_files(image_dir)
        entries, missing = [], []
        for image in images:
            name = relative_name(image, image_dir)
            label = None
            if label_dir.is_dir():
                candidates = [label_dir / f"{name}_train_id.png", label_dir / f"{name}.png"]
                label = next((c for c in candidates if c.is_file()), None)
                if label is None:
                    missing.append(candidates[0])
            entries.append(Entry(name, image, label))
        if missing:
            raise DatasetError(
                f"labels/{split} exists but {len(missing)} of {len(images)} images have no label "
                f"(NAME_train_id.png or NAME.png), e.g. "
                f"{', '.join(str(m.relative_to(root)) for m in missing[:3])}", file=root)
        space = get_label_space(label_space)
        super().__init__(root, split, entries, space, cityscapes_space_lut(space, _ENCODINGS[label_encoding]),
                         _DECLARED[label_encoding])


class ImageFolderDataset(SegmentationDataset):
    family = "folder"

    def __init__(self, root: str | Path, split: str | None = None, *,
                 label_space: str = "cityscapes19") -> None:
        if split not in (None, "all"):
            raise DatasetError(f"a plain image folder has no splits; got split '{split}'")
        root = Path(root)
        images = find_files(require_dir(root, "of images"))
        entries = [Entry(relative_name(p, root), p, None) for p in images]
        super().__init__(root, split, entries, get_label_space(label_space), None)
