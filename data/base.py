"""What every dataset reader returns: samples of (RGB image, train-id label or None, name).

A reader only finds its files (its constructor validates the layout) and says
how its label ids map into a label space; reading and mapping live here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence, TypeVar

import numpy as np
import torch.utils.data

from fcnwild.base.errors import DatasetError
from fcnwild.data.images import apply_lut, id_counts, image_size, read_image_rgb, read_label_png
from fcnwild.data.labels import LabelSpace, describe_ids

T = TypeVar("T")

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
                 space: LabelSpace, id_lut: np.ndarray | None,
                 declared_ids: Sequence[int] | None = None, check_sizes: bool = True) -> None:
        """``declared_ids``: every value the family's label files may hold (mapped to a
        class or ignored); a label holding another value is refused, naming the file.
        Every label's size is checked against its image's from the file headers, so a
        mismatch stops the command before anything trains or is scored
        (``check_sizes=False``: the reader has done it)."""
        self.root = Path(root)
        self.split = split
        self.entries = list(entries)
        self.label_space = space
        self.id_lut = id_lut
        self.declared_ids = None if declared_ids is None else tuple(sorted(declared_ids))
        if not self.entries:
            raise DatasetError(f"{self.family} split '{split}' holds no images", file=self.root)
        if check_sizes:
            raise_size_mismatches(self.family, self.root, size_mismatches(self.entries))

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
        return self.train_ids(self.read_label_ids(path), path)

    def train_ids(self, ids: np.ndarray, path: Path) -> np.ndarray:
        """The label ids read from ``path``, checked against the declared ids and mapped to
        train ids."""
        if self.declared_ids is not None:
            self.check_declared_counts(id_counts(ids), path)
        try:
            return apply_lut(ids, self.id_lut)
        except DatasetError as err:
            raise DatasetError(err.detail, file=path) from None

    def check_declared_counts(self, counts: np.ndarray, path: Path) -> None:
        """Raise, naming ``path``, when its label's id histogram (``counts[id]`` pixels)
        holds an id outside the family's declared ids."""
        if self.declared_ids is None:
            return
        present = np.flatnonzero(counts)
        stray = present[~np.isin(present, self.declared_ids)]
        if stray.size:
            raise DatasetError(f"label holds ids {describe_ids(stray.tolist())}, outside the "
                               f"{self.family} label ids ({describe_ids(self.declared_ids)})",
                               file=path)

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


class SizeMismatch(NamedTuple):
    entry: Entry
    image_size: tuple[int, int]   # (width, height)
    label_size: tuple[int, int]

    def describe(self) -> str:
        (iw, ih), (lw, lh) = self.image_size, self.label_size
        return f"{self.entry.label} is {lw}x{lh} but its image {self.entry.image} is {iw}x{ih}"


def size_mismatches(entries: Sequence[Entry]) -> list[SizeMismatch]:
    """The labelled entries whose label and image headers give different sizes. A file whose
    header cannot be read is left to the read of the sample, which reports it."""
    found = []
    for entry in entries:
        if entry.label is None:
            continue
        try:
            sizes = image_size(entry.image), image_size(entry.label)
        except DatasetError:
            continue
        if sizes[0] != sizes[1]:
            found.append(SizeMismatch(entry, *sizes))
    return found


def raise_size_mismatches(family: str, root: Path, mismatches: Sequence[SizeMismatch],
                          hint: str = "") -> None:
    """One DatasetError listing every mismatch (width x height), or nothing when there is none."""
    if mismatches:
        lines = "\n".join(f"  {m.describe()}" for m in mismatches)
        raise DatasetError(f"{len(mismatches)} {family} label(s) differ in size from their image"
                           f"{hint}:\n{lines}", file=root)


class SkippedSamples:
    """The samples a pass over a dataset leaves out, with why: an unreadable or truncated
    image or label, or label ids outside the label space. With ``strict`` the first such
    sample raises its DatasetError instead."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.errors: list[DatasetError] = []

    def read(self, read: Callable[[], T]) -> T | None:
        """``read()``, or None (recorded) when it raises a DatasetError and not strict."""
        try:
            return read()
        except DatasetError as err:
            if self.strict:
                raise
            self.errors.append(err)   # list.append is atomic: reader threads may share this
            return None

    def __len__(self) -> int:
        return len(self.errors)

    def messages(self) -> list[str]:
        return [str(err) for err in self.errors]


def skipped_report(messages: Sequence[str]) -> str:
    """What a command prints about the samples it left out: the count, then one line each."""
    lines = [f"skipped {len(messages)} sample(s) (pass --strict to stop at the first instead):"]
    return "\n".join(lines + [f"  {message}" for message in messages])


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
