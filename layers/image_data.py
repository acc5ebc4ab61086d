"""ImageData: Caffe's ImageDataLayer, batches of image files named in a list.

``source`` lists ``<path> <label>`` per line (the label is the last
space-separated field, so paths may hold spaces); paths are ``root_folder``
+ path, plainly concatenated as Caffe does. Images are read with OpenCV
(BGR, or grey when ``is_color`` is false), resized to ``new_height`` x
``new_width`` (INTER_LINEAR on the 8-bit pixels) when both are set, then go
through ``transform_param``. Tops: data (batch, C, H, W) and label (batch,).
The list wraps around after its last line, reshuffled then when ``shuffle``;
``rand_skip`` starts at a random line in [0, rand_skip). A batch takes its
size from its first image; another size later in the batch is an error.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fcnwild.base.errors import DatasetError
from fcnwild.data.caffe_io import read_image
from fcnwild.layers.base import Shape, find_input
from fcnwild.layers.data import _DataLayer
from fcnwild.layers.data_transformer import (
    DataTransformer,
    caffe_rand,
    in_layer,
    warn_legacy_fields,
)
from fcnwild.layers.registry import register


@register("ImageData")
class ImageData(_DataLayer):
    num_tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.image_data_param
        if (p.new_height == 0) != (p.new_width == 0):
            raise self.error("new_height and new_width must be set together")
        self.check_source_and_batch("image_data_param")
        self.batch_size = p.batch_size
        warn_legacy_fields(p, "image_data_param", self.name)
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           layer=self.name, base_dir=self.ctx.base_dir,
                                           source=self.ctx.source)
        self.list_path = find_input(p.source, self.ctx.base_dir, "image list", self.name)
        self.lines = self._read_list()
        self.order = torch.randperm(len(self.lines)) if p.shuffle else None
        self.line_id = 0
        if p.rand_skip:
            skip = caffe_rand(p.rand_skip)
            if skip >= len(self.lines):
                raise DatasetError(f"rand_skip drew {skip}, but the list has only "
                                   f"{len(self.lines)} lines", file=self.list_path,
                                   layer=self.name)
            self.line_id = skip
        image = self._image(self.line_id)[0]
        self.top_shape = (self.batch_size,) + self.transformer.output_shape(
            image.shape, self._where(self.line_id))

    def _read_list(self) -> list[tuple[str, int, int]]:
        """(path, label, line number) per non-blank line of the list."""
        try:
            text = self.list_path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read the image list ({err})", file=self.list_path,
                               layer=self.name) from None
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            path, _, label = line.rstrip("\r").rpartition(" ")
            try:
                lines.append((path, int(label), number))
            except ValueError:
                raise DatasetError(f"expected '<path> <integer label>', found {line!r}",
                                   file=self.list_path, line=number, layer=self.name) from None
            if not path:
                raise DatasetError(f"no image path before the label in {line!r}",
                                   file=self.list_path, line=number, layer=self.name)
        if not lines:
            raise DatasetError("the image list is empty", file=self.list_path, layer=self.name)
        return lines

    def _line(self, line_id: int) -> tuple[str, int, int]:
        return self.lines[line_id if self.order is None else int(self.order[line_id])]

    def _where(self, line_id: int) -> str:
        return f"{self.list_path}:{self._line(line_id)[2]}"

    def _image(self, line_id: int) -> tuple[np.ndarray, int]:
        p = self.param.image_data_param
        path, label, number = self._line(line_id)
        with in_layer(self.name):
            found = find_input(p.root_folder + path, self.ctx.base_dir,
                               f"image named on line {number} of {self.list_path}", self.name)
            image = read_image(found, color=p.is_color, height=p.new_height, width=p.new_width)
        return image, label

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self.top_shape, (self.batch_size,)]

    def forward(self) -> tuple[Tensor, ...]:
        images, wheres, labels = [], [], np.empty(self.batch_size, np.float32)
        for item in range(self.batch_size):
            image, labels[item] = self._image(self.line_id)
            wheres.append(self._where(self.line_id))
            if images and image.shape != images[0].shape:
                raise DatasetError(f"image of shape {image.shape} (C, H, W) in a batch whose "
                                   f"first image is {images[0].shape}; set new_height/new_width "
                                   "or batch_size 1 for images of different sizes",
                                   file=wheres[-1], layer=self.name)
            images.append(self.transformer.prepare(image, wheres[-1]))
            self.line_id += 1
            if self.line_id == len(self.lines):
                self.line_id = 0
                if self.order is not None:
                    self.order = torch.randperm(len(self.lines))
        return (self._like_net(torch.from_numpy(self.transformer.batch(images))),
                self._like_net(torch.from_numpy(labels)))

    # --- resumable position (used by the Solver's snapshots) ---------------------------
    def state_dict_position(self) -> dict:
        return {"line": self.line_id,
                "order": None if self.order is None else self.order.tolist()}

    def load_state_dict_position(self, position: dict) -> None:
        order, line = position["order"], int(position["line"])
        if (order is None) != (self.order is None) or not 0 <= line < len(self.lines) or \
                (order is not None and sorted(order) != list(range(len(self.lines)))):
            raise DatasetError(f"the saved position (line {line} of "
                               f"{'a shuffled' if order else 'an unshuffled'} list of "
                               f"{len(order) if order else 'some'} lines) does not fit this "
                               f"list of {len(self.lines)} lines", file=self.list_path,
                               layer=self.name)
        self.order = None if order is None else torch.tensor(order, dtype=torch.int64)
        self.line_id = line
