"""HDF5Output: Caffe's HDF5OutputLayer, its two bottoms written to an HDF5 file.

``hdf5_output_param.file_name`` is created (emptied) when the layer is set up
and gets datasets ``data`` and ``label`` at the first forward, each with its
blob's legacy 4-D shape (num, channels, height, width; a (3, 2) label is
written as (3, 2, 1, 1)). As in Caffe, a relative file name is relative to the
working directory, and a second forward is an error (the datasets exist). Both
writes replace the file whole (built in memory, then renamed into place), so
an error never leaves a half-written file. The layer has no tops and no
backward.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from fcnwild.base.atomic import atomic_h5
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register


def _legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    return tuple(shape) + (1,) * (4 - len(shape))


@register("HDF5Output")
class HDF5Output(Layer):
    num_bottoms = (2, 2)
    num_tops = (0, 0)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        name = self.param.hdf5_output_param.file_name
        if not name:
            raise self.error("hdf5_output_param.file_name is not set")
        self.path = Path(name)
        self.written = False
        self._write({})

    def _write(self, datasets: dict) -> None:
        try:
            with atomic_h5(self.path) as h5:
                for key, array in datasets.items():
                    h5.create_dataset(key, data=array)
        except OSError as err:
            raise self.error(f"cannot write HDF5 file {self.path} "
                             f"({err.strerror or err})") from None

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        for which, shape in zip(("data", "label"), bottom_shapes):
            if len(shape) > 4:
                raise self.error(f"the {which} bottom has {len(shape)} axes; HDF5Output "
                                 "writes blobs of at most 4 (num, channels, height, width)")
        return []

    def forward(self, data: Tensor, label: Tensor) -> tuple[Tensor, ...]:
        if self.written:
            raise self.error(f"{self.path} already holds the datasets 'data' and 'label': "
                             "HDF5Output writes one batch per file, at the first forward")
        self.reshape([tuple(data.shape), tuple(label.shape)])
        shapes = [_legacy_shape(data.shape), _legacy_shape(label.shape)]
        if shapes[0][0] != shapes[1][0]:
            raise self.error(f"data ({shapes[0][0]}) and label ({shapes[1][0]}) must have "
                             "the same batch size")
        self._write({name: blob.detach().cpu().numpy().reshape(shape)
                     for name, blob, shape in zip(("data", "label"), (data, label), shapes)})
        self.written = True
        return ()
