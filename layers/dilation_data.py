"""fyu/caffe-dilation's data layers: ImageLabelData and BinLabelData.

fyu/dilation's ``train.py`` writes its front-end nets with ``ImageLabelData``
(images and label maps named by two list files) and its context-module nets
with ``BinLabelData`` (float32 feature maps saved by ``test.py --bin``). Both
read their lists as whitespace-separated names matched by position; a name is
prefixed by the layer's directory string as is (plain concatenation, as the
fork does), and a relative result resolves against the prototxt's folder,
then the working directory. ``${VAR}`` in list paths and directories is taken
from the environment, as SegmentationData does.

ImageLabelData, per image (the fork's image_label_data_layer.cpp and its
DataTransformer): colour image as OpenCV decodes it (BGR) and grey label;
optional resize by U(min_scale, max_scale); a margin of label_slice.offset
rows/columns (image REFLECT = BORDER_REFLECT_101 or ZERO, label 255); padding
to at least crop x crop, where the fork swaps the left/right amounts so the
larger half of an odd column padding lands on the left; a crop (TEST: centre,
TRAIN: uniform), flipped together with the label with probability 1/2 when
transform_param.mirror is set (in TEST too); data (pixel - mean) * scale in
float32; label top = the crop's label at offset + stride * (i, j).

BinLabelData, per file: int32 type (5 = float32), int32 ndims (3), int32
C, H, W, then C*H*W float32; optional bin_slice (one value serves both axes);
the label map sampled at label_slice (255 outside it); both flipped with
probability 1/2 unless ``mirror: false`` (the default is true).

Randomness is the fork's in distribution, not in its values: every draw is a
pure function of a seed (taken from torch's generator when the layer is set
up, so a solver's random_seed fixes it) and of the item's position in the
stream, so ``state_dict_position`` ({seed, consumed}) resumes a run exactly.
Items wrap around the list inside a batch; with shuffle the list is permuted at
the start and again at every wrap; rand_skip skips rand() % rand_skip items.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DatasetError, FcnwildError
from fcnwild.layers.base import TRAIN, Shape
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.registry import register
from fcnwild.layers.segmentation_data import expand_environment

IGNORE = 255
_FLOAT32 = 5          # OpenCV's CV_32F, the only type code the fork's .bin files use
_SHUFFLE, _ITEM, _SKIP = 0, 1, 2    # independent random streams under one seed


@dataclass(frozen=True)
class ListEntry:
    """One name of a list file and where it was read (for error messages)."""
    name: str
    list_file: Path
    line: int


def read_name_list(path: Path, layer: str) -> list[ListEntry]:
    """Whitespace-separated names (the fork reads lists with ``ifstream >> string``)."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise DatasetError(f"cannot read the list file ({err.strerror or err})", file=path,
                           layer=layer) from None
    return [ListEntry(name, path, number)
            for number, line in enumerate(text.splitlines(), start=1) for name in line.split()]


def read_bin(path: Path) -> np.ndarray:
    """A (C, H, W) float32 array from the fork's .bin format."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read the .bin file ({err.strerror or err})",
                           file=path) from None
    if len(raw) < 8:
        raise DatasetError(f"the .bin header is truncated ({len(raw)} bytes); expected int32 "
                           "type code, int32 number of dims, the dims, then float32 values",
                           file=path)
    type_code, ndims = (int(v) for v in np.frombuffer(raw, "<i4", 2))
    if type_code != _FLOAT32:
        raise DatasetError(f".bin type code {type_code}; expected {_FLOAT32} (CV_32F: float32 "
                           "values)", file=path)
    if ndims != 3:
        raise DatasetError(f".bin file has {ndims} dims; expected 3 (channels, height, "
                           "width)", file=path)
    header = 8 + 4 * ndims
    if len(raw) < header:
        raise DatasetError(f"the .bin header is truncated ({len(raw)} bytes, the dims need "
                           f"{header})", file=path)
    dims = tuple(int(d) for d in np.frombuffer(raw, "<i4", ndims, offset=8))
    if min(dims) <= 0:
        raise DatasetError(f".bin dims {dims} must be positive", file=path)
    values = len(raw) - header
    expected = 4 * int(np.prod(dims))
    if values != expected:
        what = "truncated" if values < expected else "longer than its header says"
        raise DatasetError(f"the .bin body is {what}: {values} bytes of values for shape "
                           f"{dims}; expected {expected} (C*H*W float32)", file=path)
    return np.frombuffer(raw, "<f4", expected // 4, offset=header).reshape(dims)


def write_bin(path: Path, array: np.ndarray) -> None:
    """Write a (C, H, W) array in the fork's .bin format (what ``test.py --bin`` saves)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    if array.ndim != 3:
        raise ValueError(f"a .bin file holds a (C, H, W) array, got shape {array.shape}")
    header = np.array([_FLOAT32, 3, *array.shape], dtype="<i4")
    path.write_bytes(header.tobytes() + array.tobytes())


class _Stream:
    """Which list item, and which random draws, the g-th item of a layer's stream gets:
    position g + skip of the concatenated epochs, each a fresh permutation with shuffle."""

    def __init__(self, size: int, seed: int, shuffle: bool, skip: int) -> None:
        self.size, self.seed, self.shuffle, self.skip = size, seed, shuffle, skip
        self._epoch, self._order = -1, np.arange(size)

    def item(self, g: int) -> int:
        epoch, position = divmod(g + self.skip, self.size)
        if not self.shuffle:
            return position
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, _SHUFFLE, epoch]).permutation(
                self.size)
        return int(self._order[position])

    def rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _ITEM, g])


class _ListDataLayer(_DataLayer):
    """Shared by both layers: list files, the item stream, batches, shards, positions."""
    num_tops = (2, 2)

    def _expand(self, spec: str, what: str) -> str:
        try:
            return expand_environment(spec)
        except FcnwildError as err:
            raise self.error(f"{what}: {err.detail}") from None

    def _resolve(self, spec: str, what: str, entry: ListEntry | None = None) -> Path:
        path = Path(self._expand(spec, what))
        candidates = [path] if path.is_absolute() else \
            [d / path for d in (self.ctx.base_dir, Path.cwd()) if d is not None]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
        if entry is None:
            raise DatasetError(f"{what} {spec!r} not found (looked for {tried})",
                               file=self.ctx.source, layer=self.name)
        named = "named on this line" if spec == entry.name else \
            f"the name {entry.name!r} on this line with its directory prefix"
        raise DatasetError(f"{what} {spec!r} ({named}) not found (looked for {tried})",
                           file=entry.list_file, line=entry.line, layer=self.name)

    def _read_lists(self, data_list: str, label_list: str, data_dir: str, label_dir: str,
                    what: str, field: str) -> None:
        """Resolve both lists and every file they name into ``self.files``."""
        if not data_list or not label_list:
            raise self.error(f"{field}.{what}_list_path and {field}.label_list_path are "
                             "required")
        lists = [self._resolve(data_list, f"{field}.{what}_list_path"),
                 self._resolve(label_list, f"{field}.label_list_path")]
        data, labels = (read_name_list(path, self.name) for path in lists)
        if len(data) != len(labels):
            raise DatasetError(
                f"the {what} list {lists[0]} names {len(data)} files and the label list "
                f"{lists[1]} names {len(labels)}; they are matched by position, so they "
                "must name as many", file=self.ctx.source, layer=self.name)
        if not data:
            raise DatasetError(f"the {what} list names no file", file=lists[0],
                               layer=self.name)
        directories = (self._expand(data_dir, f"{field}.{what}_dir"),
                       self._expand(label_dir, f"{field}.label_dir"))
        self.files = [tuple(self._resolve(d + e.name, f"{kind} file", e)
                            for d, e, kind in zip(directories, pair, (what, "label")))
                      for pair in zip(data, labels)]
        self.entries = list(zip(data, labels))

    def _start_stream(self, batch_size: int, shuffle: bool, rand_skip: int = 0) -> None:
        if batch_size < 1:
            raise self.error("batch_size must be at least 1")
        self.batch_size = batch_size
        # torch's CPU generator even while nets are built on another (e.g. meta) device
        self.seed = int(torch.randint(0, 2**62, (), device="cpu").item())
        self.shuffle, self.rand_skip = shuffle, rand_skip
        self.consumed = 0                # stream items read by all shards together
        self.shard = (0, 1)
        self._new_stream()

    def _new_stream(self) -> None:
        skip = 0
        if self.rand_skip:
            skip = int(np.random.default_rng([self.seed, _SKIP]).integers(self.rand_skip))
            if skip >= len(self.files):
                raise DatasetError(f"rand_skip drew {skip}, but the lists name only "
                                   f"{len(self.files)} items (the fork stops here too: "
                                   "\"Not enough points to skip\")", file=self.ctx.source,
                                   layer=self.name)
        self.stream = _Stream(len(self.files), self.seed, self.shuffle, skip)

    def _item_indices(self) -> list[int]:
        rank, count = self.shard
        return [self.consumed + rank + k * count for k in range(self.batch_size)]

    def _load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def forward(self) -> tuple[Tensor, ...]:
        data, labels = [], []
        for g in self._item_indices():
            index = self.stream.item(g)
            item, label = self._load(index, self.stream.rng(g))
            if data and item.shape != data[0].shape:
                raise DatasetError(f"item of shape {item.shape} in a batch whose first item "
                                   f"has shape {data[0].shape}: a batch needs equal sizes",
                                   file=self.files[index][0], layer=self.name)
            data.append(item)
            labels.append(label)
        self.consumed += self.batch_size * self.shard[1]
        return (self._like_net(torch.from_numpy(np.stack(data))),
                self._like_net(torch.from_numpy(np.stack(labels)[:, None])))

    def _decode(self, index: int, which: int, flags: int) -> np.ndarray:
        path, entry = self.files[index][which], self.entries[index][which]
        image = cv2.imread(str(path), flags)
        if image is None:
            kind = "image" if flags == cv2.IMREAD_COLOR else "label"
            raise DatasetError(f"OpenCV cannot decode the {kind} {path} (named on this line)",
                               file=entry.list_file, line=entry.line, layer=self.name)
        return image

    # --- data-parallel shards and resumable positions (used by the Solver) ---------------
    def set_shard(self, rank: int, count: int) -> None:
        """Rank ``rank`` of ``count`` reads items rank, rank + count, ... of one stream, so
        the ranks together read the batches of one process with ``count`` times the batch.
        The ranks' seeds differ (the solver seeds each rank's torch generator apart), so
        rank 0's seed is shared first."""
        if not 0 <= rank < count:
            raise self.error(f"shard rank {rank} is not in [0, {count})")
        self.shard = (rank, count)
        if count > 1 and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            seed = [self.seed]
            torch.distributed.broadcast_object_list(seed, src=0)
            self.seed = int(seed[0])
            self._new_stream()

    def state_dict_position(self) -> dict:
        return {"seed": self.seed, "consumed": self.consumed}

    def load_state_dict_position(self, position: dict) -> None:
        try:
            seed, consumed = int(position["seed"]), int(position["consumed"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"a data position needs integer 'seed' and 'consumed', got "
                               f"{position!r}", layer=self.name) from None
        if consumed < 0:
            raise DatasetError(f"a data position cannot have consumed {consumed} < 0",
                               layer=self.name)
        self.seed, self.consumed = seed, consumed
        self._new_stream()


def _pairs(values: Sequence[int], field: str, error, default: int | None = None,
           broadcast: bool = False) -> tuple[int, int]:
    """(rows, columns) from a Slice field: two values, or (with ``broadcast``) one for both,
    or (with ``default``) none."""
    values = list(values)
    if len(values) == 2 or (broadcast and len(values) == 1):
        return values[0], values[-1]
    if not values and default is not None:
        return default, default
    allowed = "two values (rows, columns)" + (", or one for both" if broadcast else "") + \
        (f", or none (default {default})" if default is not None else "")
    raise error(f"{field} has {len(values)} value(s); it needs {allowed}")


@dataclass(frozen=True)
class _Grid:
    """A Slice resolved: element (i, j) at (offset + stride * (i, j)), i, j < dim."""
    dim: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def last(self) -> tuple[int, int]:
        return tuple(o + s * (d - 1) for o, s, d in zip(self.offset, self.stride, self.dim))

    def rows(self) -> np.ndarray:
        return self.offset[0] + self.stride[0] * np.arange(self.dim[0])

    def cols(self) -> np.ndarray:
        return self.offset[1] + self.stride[1] * np.arange(self.dim[1])


def _grid(message: caffe_pb2.Slice, field: str, error, *, one_dim: bool,
          defaults: bool) -> _Grid:
    """ImageLabelData needs two values in each field; BinLabelData lets one stride or
    offset serve both axes (defaults 1 and 0), and one dim too in bin_slice (``one_dim``)."""
    dim = _pairs(message.dim, f"{field}.dim", error, broadcast=one_dim)
    if min(dim) < 1:
        raise error(f"{field}.dim must be positive, got {dim}")
    stride = _pairs(message.stride, f"{field}.stride", error, broadcast=defaults,
                    default=1 if defaults else None)
    offset = _pairs(message.offset, f"{field}.offset", error, broadcast=defaults,
                    default=0 if defaults else None)
    return _Grid(dim, stride, offset)


@register("ImageLabelData")
class ImageLabelData(_ListDataLayer):
    """Tops: data (B, 3, crop, crop) BGR, mean-subtracted and scaled; label (B, 1, h, w)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p, t = self.param.image_label_data_param, self.param.transform_param
        field = "image_label_data_param"
        if not t.crop_size:
            raise self.error("transform_param.crop_size is required: ImageLabelData crops "
                             "every image (and slices the label) at that size")
        if t.HasField("mean_file"):
            raise self.error("transform_param.mean_file is not supported by ImageLabelData; "
                             "give the per-channel mean as mean_value (B, G, R)")
        if len(t.mean_value) not in (0, 1, 3):
            raise self.error(f"transform_param.mean_value has {len(t.mean_value)} values; "
                             "give one, or one per channel (3: B, G, R)")
        if not p.HasField("label_slice"):
            raise self.error(f"{field}.label_slice is required (dim, stride and offset, two "
                             "values each)")
        self.crop = int(t.crop_size)
        self.grid = _grid(p.label_slice, f"{field}.label_slice", self.error, one_dim=False,
                          defaults=False)
        if max(self.grid.last()) >= self.crop:
            raise self.error(f"{field}.label_slice reaches row/column {self.grid.last()}, "
                             f"outside the {self.crop} x {self.crop} crop (offset + stride * "
                             "(dim - 1) must be < crop_size)")
        if p.rand_scale and not 0 < p.min_scale <= p.max_scale:
            raise self.error(f"rand_scale needs 0 < min_scale <= max_scale, got "
                             f"{p.min_scale} and {p.max_scale}")
        mean = list(t.mean_value) or [0.0]
        self.mean = np.array(mean * 3 if len(mean) == 1 else mean, np.float32)
        self.scale = np.float32(t.scale)
        self.border = cv2.BORDER_REFLECT_101 if p.padding == p.REFLECT else cv2.BORDER_CONSTANT
        image_dir, label_dir = p.image_dir, p.label_dir
        if not image_dir and not label_dir:
            image_dir = label_dir = p.data_dir
        self._read_lists(p.image_list_path, p.label_list_path, image_dir, label_dir,
                         "image", field)
        self._start_stream(p.batch_size, p.shuffle, p.rand_skip)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size, 3, self.crop, self.crop),
                (self.batch_size, 1) + self.grid.dim]

    def _load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.param.image_label_data_param
        image = self._decode(index, 0, cv2.IMREAD_COLOR)
        label = self._decode(index, 1, cv2.IMREAD_GRAYSCALE)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"label {self.files[index][1]} is {label.shape[0]}x"
                               f"{label.shape[1]}, its image {image.shape[0]}x"
                               f"{image.shape[1]}; they must be the same size",
                               file=self.entries[index][1].list_file,
                               line=self.entries[index][1].line, layer=self.name)
        if p.rand_scale:
            s = rng.uniform(p.min_scale, p.max_scale)
            label = cv2.resize(label, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
            image = cv2.resize(image, None, fx=s, fy=s,
                               interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
        rows, cols = self.grid.offset
        image = cv2.copyMakeBorder(image, rows, rows, cols, cols, self.border, value=0)
        label = cv2.copyMakeBorder(label, rows, rows, cols, cols, cv2.BORDER_CONSTANT,
                                   value=IGNORE)
        image, label = self._pad(image, self.border), self._pad(label, cv2.BORDER_CONSTANT,
                                                                IGNORE)
        height, width = image.shape[:2]
        mirror = self.param.transform_param.mirror and bool(rng.integers(2))
        if self.phase == TRAIN:
            top, left = int(rng.integers(height - self.crop + 1)), \
                int(rng.integers(width - self.crop + 1))
        else:
            top, left = (height - self.crop) // 2, (width - self.crop) // 2
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        image, label = image[window], label[window]
        if mirror:
            image, label = image[:, ::-1], label[:, ::-1]
        data = (image.astype(np.float32) - self.mean) * self.scale
        sampled = label[np.ix_(self.grid.rows(), self.grid.cols())]
        return np.ascontiguousarray(data.transpose(2, 0, 1)), sampled.astype(np.float32)

    def _pad(self, image: np.ndarray, border: int, value: int = 0) -> np.ndarray:
        """The fork's PadImage: centre in at least crop x crop; it hands copyMakeBorder
        (right, left) for (left, right), so an odd column padding is larger on the left."""
        height, width = image.shape[:2]
        if height >= self.crop and width >= self.crop:
            return image
        top = left = bottom = right = 0
        if height < self.crop:
            top = (self.crop - height) // 2
            bottom = self.crop - height - top
        if width < self.crop:
            left = (self.crop - width) // 2
            right = self.crop - width - left
        return cv2.copyMakeBorder(image, top, bottom, right, left, border, value=value)


@register("BinLabelData")
class BinLabelData(_ListDataLayer):
    """Tops: data (B, C, H, W) from .bin files (optionally sliced); label (B, 1, h, w)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.bin_label_data_param
        field = "bin_label_data_param"
        if not p.HasField("label_slice"):
            raise self.error(f"{field}.label_slice is required (dim: two values)")
        self.label_grid = _grid(p.label_slice, f"{field}.label_slice", self.error,
                                one_dim=False, defaults=True)
        self.bin_grid = None
        if p.bin_slice.ListFields():
            self.bin_grid = _grid(p.bin_slice, f"{field}.bin_slice", self.error,
                                  one_dim=True, defaults=True)
        self._read_lists(p.bin_list_path, p.label_list_path, p.bin_dir, p.label_dir, "bin",
                         field)
        self._start_stream(p.batch_size, p.shuffle)
        first = self.stream.item(0)
        self.data_shape = self._slice_bin(read_bin(self.files[first][0]),
                                          self.files[first][0]).shape

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size,) + tuple(self.data_shape),
                (self.batch_size, 1) + self.label_grid.dim]

    def _slice_bin(self, array: np.ndarray, path: Path) -> np.ndarray:
        if self.bin_grid is None:
            return array
        last = self.bin_grid.last()
        if last[0] >= array.shape[1] or last[1] >= array.shape[2]:
            raise DatasetError(f"bin_slice reaches row/column {last}, outside the "
                               f"{array.shape[1]} x {array.shape[2]} map", file=path,
                               layer=self.name)
        return array[:, self.bin_grid.rows()[:, None], self.bin_grid.cols()[None, :]]

    def _load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = self._slice_bin(read_bin(self.files[index][0]), self.files[index][0])
        except DatasetError as err:
            raise DatasetError(err.detail, file=err.file, layer=self.name) from None
        image = self._decode(index, 1, cv2.IMREAD_GRAYSCALE)
        rows, cols = self.label_grid.rows(), self.label_grid.cols()
        label = np.full(self.label_grid.dim, IGNORE, np.float32)
        inside_rows, inside_cols = rows < image.shape[0], cols < image.shape[1]
        label[np.ix_(inside_rows, inside_cols)] = image[np.ix_(rows[inside_rows],
                                                               cols[inside_cols])]
        if self.param.bin_label_data_param.mirror and rng.integers(2):
            data, label = data[:, :, ::-1], label[:, ::-1]
        return np.ascontiguousarray(data, np.float32), np.ascontiguousarray(label)
