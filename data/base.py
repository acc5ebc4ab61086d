"""What every dataset reader returns: samples of (RGB image, train-id label or None, name).

A reader only finds its files (its constructor validates the layout) and says
how its label ids map into a label space; reading and mapping live here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch.utils.data

from fcnwild.data.images import apply_lut, read_image_rgb, read_label_png
from fcnwild.data.labels import LabelSpace
from fcnwild.nets.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Sample(NamedTuple):
    image: np.ndarray           # HxWx3 uint8, RGB
    label: np.ndarray | None    # HxW uint8 train ids, 255 = ignore; None when unlabelled
    name: str                   # relative path without extension, e.g. "aachen/aachen_000000_000019_leftImg8bit"


@dataclass(frozen=True)
class Entry:
    name: str
    image: Path
    label: Path | None


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of image (and label) files plus the map of their label ids into a label space."""

    family = "dataset"

    def __init__(self, root: str | Path, split: str | None, entries: Sequence[Entry],
                 space: LabelSpace, id_lut: np.ndarray | None) -> None:
        self.root = Path(root)
        self.split = split
        self.entries = list(entries)
        self.label_space = space
        self.id_lut = id_lut
        if not self.entries:
            raise DatasetError(f"{self.family} split '{split}' holds no images", file=self.root)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.image(index), self.label(index), self.entries[index].name)

    def image(self, index: int) -> np.ndarray:
        return read_image_rgb(self.entries[index].image)

    def label(self, index: int) -> np.ndarray | None:
        """The label map of one sample in train ids (255 = ignore), or None if unlabelled."""
        path = self.entries[index].label
        if path is None:
            return None
        ids = self.read_label_ids(path)
        try:
            return apply_lut(ids, self.id_lut)
        except DatasetError as err:
            raise DatasetError(err.detail, file=path) from None

    def read_label_ids(self, path: Path) -> np.ndarray:
        return read_label_png(path)

    @property
    def labelled(self) -> bool:
        return all(e.label is not None for e in self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def prediction_key(self, name: str) -> str:
        """The key that pairs a saved prediction (its relative path without extension) with a sample."""
        return name

    def __repr__(self) -> str:
        labelled = sum(e.label is not None for e in self.entries)
        return (f"{self.family} split '{self.split}' at {self.root}: {len(self)} images, "
                f"{labelled} labels, label space {self.label_space.name}")


def find_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, pattern: str = "*") -> list[Path]:
    """Files under ``folder`` (recursively) whose name matches ``pattern`` and ends in a suffix, sorted."""
    return sorted(p for p in folder.rglob(pattern) if p.suffix.lower() in suffixes and p.is_file())


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"missing folder {what}", file=path)
    return path


def relative_name(path: Path, base: Path, strip: str = "") -> str:
    """``path`` relative to ``base`` without extension (and without a trailing ``strip``), posix style."""
    name = path.relative_to(base).with_suffix("").as_posix()
    return name[: -len(strip)] if strip and name.endswith(strip) else name


def split_list(value: str | Sequence[str] | None) -> list[str] | None:
    """Options arrive as lists from Python and as comma-separated strings from dataset specs."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def parse_flag(value: bool | str, option: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise DatasetError(f"option {option}={value!r}: expected true or false")
