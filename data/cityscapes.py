"""Cityscapes in its official layout (mcordts/cityscapesScripts README):

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Labels are Cityscapes label ids, mapped to the 19 trainIds (or a 16/13-class
subset). ``cities`` keeps some cities only, for cross-city adaptation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import (
    Entry,
    SegmentationDataset,
    find_files,
    parse_flag,
    relative_name,
    require_dir,
    split_list,
)
from fcnwild.data.labels import (
    CITYSCAPES_ID_TO_TRAIN,
    CITYSCAPES_LABEL_IDS,
    cityscapes_space_lut,
    get_label_space,
)

IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds"


def frame_key(name: str) -> str:
    """``{city}_{seq}_{frame}`` of a file stem: how the official evaluator pairs predictions with labels."""
    return "_".join(Path(name).name.split("_")[:3])


class CityscapesDataset(SegmentationDataset):
    family = "cityscapes"

    def __init__(self, root: str | Path, split: str | None = "val", *,
                 cities: str | Sequence[str] | None = None, labels: bool | str = True,
                 label_space: str = "cityscapes19") -> None:
        root = Path(root)
        split = split or "val"
        image_dir = require_dir(root / "leftImg8bit" / split,
                                f"leftImg8bit/{split} (expected leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX}.png)")
        available = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
        wanted = split_list(cities)
        if wanted is not None:
            unknown = sorted(set(wanted) - set(available))
            if unknown:
                raise DatasetError(f"cities {', '.join(unknown)} not in split '{split}'; "
                                   f"available: {', '.join(available)}", file=image_dir)
        images = [p for p in find_files(image_dir, (".png",), f"*{IMAGE_SUFFIX}.png")
                  if wanted is None or p.parent.name in wanted]

        want_labels = parse_flag(labels, "labels")
        label_dir = root / "gtFine" / split
        if want_labels:
            require_dir(label_dir, f"gtFine/{split} (expected gtFine/{split}/<city>/*{LABEL_SUFFIX}.png)")
        entries = []
        missing = []
        for image in images:
            name = relative_name(image, image_dir)
            label = None
            if want_labels:
                label = label_dir / f"{name[: -len(IMAGE_SUFFIX)]}{LABEL_SUFFIX}.png"
                if not label.is_file():
                    missing.append(label)
            entries.append(Entry(name, image, label))
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(images)} images have no label file, e.g. "
                f"{', '.join(str(m.relative_to(root)) for m in missing[:3])}; matched "
                f"{len(images) - len(missing)} image/label pairs", file=root)
        space = get_label_space(label_space)
        super().__init__(root, split, entries, space, cityscapes_space_lut(space, CITYSCAPES_ID_TO_TRAIN),
                         CITYSCAPES_LABEL_IDS)

    def prediction_key(self, name: str) -> str:
        return frame_key(name)
