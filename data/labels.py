"""Label spaces: class names in the paper's column order, id -> trainId maps, palettes.

A *label space* is what a net predicts: train ids 0..K-1, 255 = ignore. Each
dataset family stores its own *label ids* on disk; a lookup table (LUT) maps
them into a label space. Everything not listed maps to 255.

Sources (checked, not guessed):
- Cityscapes ids, trainIds, names and colours: mcordts/cityscapesScripts,
  ``cityscapesscripts/helpers/labels.py`` (the ``labels`` table). The 19-class
  palette and the BGR mean come from fyu/dilation ``datasets/cityscapes.json``
  (copied unchanged as ``dataset_cityscapes.json`` beside this file).
- GTA5 (Richter et al., "Playing for Data") labels are Cityscapes label ids.
- SYNTHIA-RAND-CITYSCAPES ids (README of the set; the table is reproduced in
  m-birke/automotive-segmentation-datasets ``synthia_rand_cityscapes.md``):
  0 void, 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole,
  8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle,
  13 parking-slot, 14 road-work, 15 traffic light, 16 terrain, 17 rider,
  18 truck, 19 bus, 20 train, 21 wall, 22 lanemarking. Its map onto the 19
  Cityscapes trainIds is the one every SYNTHIA -> Cityscapes paper uses
  (e.g. ADVENT's / DAFormer's ``id_to_trainid``).
- SYNTHIA-SEQS (video sequences) ids and colours (README of the sequences;
  m-birke/automotive-segmentation-datasets ``synthia_sequences.md``):
  0 void, 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation,
  7 pole, 8 car, 9 sign, 10 pedestrian, 11 cyclist, 12 lanemarking,
  13/14 reserved, 15 traffic light. The paper's 13 classes are every id but
  void and the two reserved ones, in that id order.
- 16-class subset (SYNTHIA -> Cityscapes papers): the 19 classes without
  terrain, truck and train, which SYNTHIA does not label. 13-class subset: the
  16 without wall, fence and pole (the "mIoU*" of AdaptSegNet and successors).
  The paper's 17.0 (SYNTHIA -> Cityscapes) is the 19-class mean of a row whose
  16-class mean is the 20.2 later papers cite (17.0 * 19 / 16 = 20.2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fcnwild.base.errors import DatasetError

IGNORE = 255

_DATASET_JSON = Path(__file__).with_name("dataset_cityscapes.json")


def _published_cityscapes() -> tuple[np.ndarray, tuple[float, float, float]]:
    with open(_DATASET_JSON, encoding="utf-8") as f:
        spec = json.load(f)
    return np.asarray(spec["palette"], dtype=np.uint8), tuple(float(v) for v in spec["mean"])


CITYSCAPES_PALETTE, CITYSCAPES_MEAN_BGR = _published_cityscapes()

# (name, short name as in the paper's table header, Cityscapes label id), in trainId order.
_CITYSCAPES_CLASSES = (
    ("road", "road", 7), ("sidewalk", "sidewalk", 8), ("building", "building", 11),
    ("wall", "wall", 12), ("fence", "fence", 13), ("pole", "pole", 17),
    ("traffic light", "light", 19), ("traffic sign", "sign", 20), ("vegetation", "veg", 21),
    ("terrain", "terrain", 22), ("sky", "sky", 23), ("person", "person", 24),
    ("rider", "rider", 25), ("car", "car", 26), ("truck", "truck", 27), ("bus", "bus", 28),
    ("train", "train", 31), ("motorcycle", "mbike", 32), ("bicycle", "bike", 33),
)
CITYSCAPES_NAMES = tuple(c[0] for c in _CITYSCAPES_CLASSES)

# Cityscapes label id -> trainId (every id 0..33 not listed is ignored in training and evaluation).
CITYSCAPES_ID_TO_TRAIN: dict[int, int] = {c[2]: k for k, c in enumerate(_CITYSCAPES_CLASSES)}

# Every id a Cityscapes labelIds PNG may hold: the labels table of cityscapesScripts has ids
# 0..33, and -1 (license plate), which json2labelImg never draws. GTA5 uses the same ids.
CITYSCAPES_LABEL_IDS = tuple(range(34))

_NOT_IN_SYNTHIA = ("terrain", "truck", "train")
_NOT_IN_13 = _NOT_IN_SYNTHIA + ("wall", "fence", "pole")
CITYSCAPES_16 = tuple(k for k, n in enumerate(CITYSCAPES_NAMES) if n not in _NOT_IN_SYNTHIA)
CITYSCAPES_13 = tuple(k for k, n in enumerate(CITYSCAPES_NAMES) if n not in _NOT_IN_13)

# SYNTHIA-RAND-CITYSCAPES id -> Cityscapes trainId.
SYNTHIA_RAND_ID_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

SYNTHIA_RAND_LABEL_IDS = tuple(range(23))   # 0 void .. 22 lanemarking

# SYNTHIA-SEQS: (name, short name, SYNTHIA id, RGB colour of the set's GT/COLOR images).
_SYNTHIA_SEQS_CLASSES = (
    ("sky", "sky", 1, (128, 128, 128)), ("building", "building", 2, (128, 0, 0)),
    ("road", "road", 3, (128, 64, 128)), ("sidewalk", "sidewalk", 4, (0, 0, 192)),
    ("fence", "fence", 5, (64, 64, 128)), ("vegetation", "veg", 6, (128, 128, 0)),
    ("pole", "pole", 7, (192, 192, 128)), ("car", "car", 8, (64, 0, 128)),
    ("traffic sign", "sign", 9, (192, 128, 128)), ("pedestrian", "ped", 10, (64, 64, 0)),
    ("bicycle", "bike", 11, (0, 128, 192)), ("lanemarking", "lanemark", 12, (0, 175, 0)),
    ("traffic light", "light", 15, (0, 128, 128)),
)
SYNTHIA_SEQS_ID_TO_TRAIN: dict[int, int] = {c[2]: k for k, c in enumerate(_SYNTHIA_SEQS_CLASSES)}
SYNTHIA_SEQS_LABEL_IDS = tuple(range(16))   # 0 void .. 15 traffic light (13, 14 reserved)


@dataclass(frozen=True)
class LabelSpace:
    """The classes a net predicts, and how they are written to and read from label-id PNGs.

    ``train_to_id[k]`` is the on-disk label id of train id k (for exported
    predictions); ``void_id`` is written for ignored pixels. ``means`` names the
    class subsets whose mean IoU is reported, e.g. ``{"19": all, "16": ...}``.
    """

    name: str
    class_names: tuple[str, ...]
    short_names: tuple[str, ...]
    train_to_id: tuple[int, ...]
    void_id: int
    palette: np.ndarray = field(repr=False)
    means: Mapping[str, tuple[int, ...]] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def id_lut(self) -> np.ndarray:
        """uint8[256]: on-disk label id -> train id of this space (255 elsewhere)."""
        return lut_from_mapping(dict(zip(self.train_to_id, range(self.num_classes))))

    def export_lut(self) -> np.ndarray:
        """uint8[256]: train id -> on-disk label id (``void_id`` for 255 and unknown ids)."""
        lut = np.full(256, self.void_id, dtype=np.uint8)
        lut[: self.num_classes] = self.train_to_id
        return lut

    def color_lut(self) -> np.ndarray:
        """uint8[256, 3]: train id -> RGB colour (black for ignore)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.palette
        return lut


def lut_from_mapping(mapping: Mapping[int, int], size: int = 256) -> np.ndarray:
    """A uint8 lookup table of ``size`` entries: ``mapping`` where given, 255 elsewhere."""
    lut = np.full(size, IGNORE, dtype=np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    return lut


def _cityscapes_subspace(name: str, keep: tuple[int, ...]) -> LabelSpace:
    kept = set(keep)
    means = {label: tuple(keep.index(k) for k in subset if k in kept)
             for label, subset in _CITYSCAPES_MEANS.items() if set(subset) <= kept}
    return LabelSpace(
        name=name,
        class_names=tuple(CITYSCAPES_NAMES[k] for k in keep),
        short_names=tuple(_CITYSCAPES_CLASSES[k][1] for k in keep),
        train_to_id=tuple(_CITYSCAPES_CLASSES[k][2] for k in keep),
        void_id=0,
        palette=CITYSCAPES_PALETTE[list(keep)],
        means=means,
    )


_CITYSCAPES_MEANS = {"19": tuple(range(19)), "16": CITYSCAPES_16, "13": CITYSCAPES_13}

CITYSCAPES19 = _cityscapes_subspace("cityscapes19", tuple(range(19)))
CITYSCAPES16 = _cityscapes_subspace("cityscapes16", CITYSCAPES_16)
CITYSCAPES13 = _cityscapes_subspace("cityscapes13", CITYSCAPES_13)

SYNTHIA_SEQS13 = LabelSpace(
    name="synthia-seqs13",
    class_names=tuple(c[0] for c in _SYNTHIA_SEQS_CLASSES),
    short_names=tuple(c[1] for c in _SYNTHIA_SEQS_CLASSES),
    train_to_id=tuple(c[2] for c in _SYNTHIA_SEQS_CLASSES),
    void_id=0,
    palette=np.asarray([c[3] for c in _SYNTHIA_SEQS_CLASSES], dtype=np.uint8),
    means={"13": tuple(range(13))},
)

LABEL_SPACES: dict[str, LabelSpace] = {
    s.name: s for s in (CITYSCAPES19, CITYSCAPES16, CITYSCAPES13, SYNTHIA_SEQS13)}


def get_label_space(name: str | LabelSpace) -> LabelSpace:
    """Look a label space up by name (an instance passes through)."""
    if isinstance(name, LabelSpace):
        return name
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise DatasetError(f"unknown label space '{name}'; expected one of "
                           f"{', '.join(LABEL_SPACES)}") from None


def cityscapes_space_lut(space: LabelSpace, source_to_train19: Mapping[int, int],
                         size: int = 256) -> np.ndarray:
    """LUT from a source's label ids into ``space`` (one of the Cityscapes spaces).

    ``source_to_train19`` maps source ids to the 19 Cityscapes trainIds; classes
    outside ``space`` become 255, the rest are renumbered to the space's ids.
    """
    if not set(space.class_names) <= set(CITYSCAPES_NAMES):
        raise DatasetError(f"label space '{space.name}' is not a Cityscapes label space; "
                           f"expected one of cityscapes19, cityscapes16, cityscapes13")
    train19_to_space = {CITYSCAPES_NAMES.index(n): k for k, n in enumerate(space.class_names)}
    return lut_from_mapping({s: train19_to_space[t] for s, t in source_to_train19.items()
                             if t in train19_to_space}, size)


def describe_ids(ids: Sequence[int]) -> str:
    """Sorted ids with runs folded: (0, 1, 2, 3, 255) -> "0..3, 255"."""
    parts, values = [], sorted(set(ids))
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            first, last = values[start], values[i - 1]
            parts.append(f"{first}" if first == last else f"{first}..{last}")
            start = i
    return ", ".join(parts)
