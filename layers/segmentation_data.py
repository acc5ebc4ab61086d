"""SegmentationData: a data layer over a dataset in its official layout (fcnwild.data).

Tops: ``data`` (B, 3, crop, crop) in Caffe's convention (BGR, 0-255, mean
subtracted, reflect-101 padded by the net's margin) and optionally ``label``
(B, 1, h, w) train ids with 255 = ignore; an ``unlabelled`` source (an
adaptation target) gives an all-255 label top. ``${VAR}`` in the source spec
is replaced from the environment, so shipped prototxts name no local paths.

The dataset is opened (and its layout checked) when the net is built; the
loader's workers start at the first forward. Batches are a pure function of
the seed and the position in the stream, which the solver snapshots, so a
resumed run reads exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base.errors import DatasetError, FcnwildError
from fcnwild.data.datasets import open_dataset
from fcnwild.data.loader import BlobFeeder
from fcnwild.data.transforms import CaffeTransform
from fcnwild.layers.base import Shape
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.registry import register

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_environment(spec: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise DatasetError(f"dataset source {spec!r} uses ${{{name}}}, which is not set; "
                               f"export {name}=/path/to/the/dataset")
        return os.environ[name]
    return _VARIABLE.sub(value, spec)


@register("SegmentationData")
class SegmentationData(_DataLayer):
    """Tops: data [, label [, image_labels]]."""
    num_tops = (1, 3)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.segmentation_data_param
        if not p.source:
            raise self.error("segmentation_data_param.source is required, e.g. "
                             '"cityscapes:${CITYSCAPES_ROOT}"')
        if p.batch_size < 1:
            raise self.error("batch_size must be at least 1")
        options = {}
        for option in p.option:
            key, sep, value = option.partition("=")
            if not sep:
                raise self.error(f"option {option!r}: expected key=value")
            options[key] = value
        try:
            self.dataset = open_dataset(expand_environment(p.source), p.split, **options)
            scale = None if (p.scale_min, p.scale_max) == (1, 1) else (p.scale_min, p.scale_max)
            self.transform = CaffeTransform(
                crop_size=p.crop_size or None, margin=p.margin,
                mean_bgr=tuple(p.mean) if len(p.mean) else CaffeTransform.mean_bgr,
                mirror=p.mirror, random_crop=p.random_crop, scale=scale,
                label_stride=p.label_stride)
        except FcnwildError as err:
            raise self.error(f"{err}") from None
        if len(self.dataset) == 0:
            raise self.error(f"{self.dataset!r} holds no images")
        self.with_labels = len(self.param.top) >= 2
        self.image_labels = None
        if len(self.param.top) == 3:
            if not p.image_labels:
                raise self.error("a third top needs segmentation_data_param.image_labels")
            self.image_labels = self._load_image_labels(p.image_labels)
        self.read_labels = self.with_labels and not p.unlabelled
        if self.read_labels and not self.dataset.labelled:
            raise self.error(f"{self.dataset!r} has no labels; set unlabelled: true (an "
                             "all-255 label top) or drop the label top")
        self.batch_size = p.batch_size
        if p.crop_size:
            self.image_shape = (p.crop_size, p.crop_size)
        else:
            height, width = self.dataset.image(0).shape[:2]
            self.image_shape = (height + 2 * p.margin, width + 2 * p.margin)
        self.label_shape = self.transform.label_shape(*self.image_shape) if p.crop_size else \
            self.transform.label_shape(self.image_shape[0] - 2 * p.margin,
                                       self.image_shape[1] - 2 * p.margin)
        self.shard = (0, 1)
        self.consumed = 0          # stream items consumed by all ranks together
        self._feeder = None

    def _load_image_labels(self, source: str) -> np.ndarray:
        """(images, classes) present-class table aligned with the dataset's image order."""
        path = Path(expand_environment(source))
        if not path.is_absolute() and self.ctx.base_dir is not None:
            path = self.ctx.base_dir / path
        try:
            with np.load(path, allow_pickle=False) as table:
                names, present = list(table["names"]), np.asarray(table["present"], bool)
        except (OSError, KeyError, ValueError) as err:
            raise DatasetError(f"cannot read image-level labels ({err}); expected an .npz with "
                               "'names' and 'present' (images x classes)", file=path,
                               layer=self.name) from None
        row = {str(name): i for i, name in enumerate(names)}
        missing = [n for n in self.dataset.names() if n not in row]
        if missing or present.ndim != 2 or len(names) != present.shape[0]:
            raise DatasetError(f"image-level labels do not cover {len(missing)} of "
                               f"{len(self.dataset)} images (e.g. {missing[:1]}) or are not "
                               "images x classes", file=path, layer=self.name)
        return present[[row[n] for n in self.dataset.names()]]

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shapes = [(self.batch_size, 3) + tuple(self.image_shape)]
        if self.with_labels:
            shapes.append((self.batch_size, 1) + tuple(self.label_shape))
        if self.image_labels is not None:
            shapes.append((self.batch_size, self.image_labels.shape[1]))
        return shapes

    def forward(self) -> tuple[Tensor, ...]:
        if self._feeder is None:
            p = self.param.segmentation_data_param
            self._feeder = BlobFeeder(
                self.dataset, self.transform, self.batch_size,
                label_blob="label" if self.read_labels else None, workers=p.workers,
                seed=p.seed, shuffle=p.shuffle, start=self.consumed, shard=self.shard,
                image_labels=self.image_labels)
        try:
            batch = next(self._feeder)
        except RuntimeError as err:     # the collate of whole images of different sizes
            raise self.error(f"cannot batch whole images (crop_size 0) of different sizes "
                             f"from {self.dataset!r}: use batch_size 1 or a crop ({err})"
                             ) from None
        self.consumed += self.batch_size * self.shard[1]
        tops = [self._like_net(torch.from_numpy(batch["data"]))]
        if self.with_labels:
            label = batch["label"] if self.read_labels else np.full(
                (batch["data"].shape[0], 1) + tuple(self.label_shape), 255, np.float32)
            tops.append(self._like_net(torch.from_numpy(label)))
        if self.image_labels is not None:
            tops.append(self._like_net(torch.as_tensor(batch["image_labels"])))
        return tuple(tops)

    # --- data-parallel shards and resumable positions (used by the Solver) ---------------
    def set_shard(self, rank: int, count: int) -> None:
        self.shard = (rank, count)
        self._restart()

    def state_dict_position(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict_position(self, position: dict) -> None:
        self.consumed = int(position["consumed"])
        self._restart()

    def _restart(self) -> None:
        if self._feeder is not None:
            self._feeder.close()
        self._feeder = None

    def __del__(self) -> None:
        feeder = getattr(self, "_feeder", None)
        if feeder is not None:
            feeder.close()
