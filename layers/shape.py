"""Layers that move, copy or reduce data without learnable params:
Crop, Concat, Slice, Split, Flatten, Reshape, Silence, Tile, Reduction.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import canonical_axis, count, shape_str
from fcnwild.layers.base import Layer, Shape
from fcnwild.layers.registry import register


@register("Crop")
class Crop(Layer):
    """Crop bottom 0 to bottom 1's shape on ``axis`` and every axis after it.

    One offset applies to all cropped axes, or one offset per cropped axis.
    Bottom 1 only supplies the shape and never gets a gradient.
    """
    num_bottoms = (2, 2)
    no_grad_bottoms = (1,)

    def _offsets(self, data: Sequence[int], ref: Sequence[int]) -> tuple[int, list[int]]:
        p = self.param.crop_param
        axis = canonical_axis(p.axis, len(data), self.error)
        cropped = len(data) - axis
        if len(p.offset) > 1 and len(p.offset) != cropped:
            raise self.error(f"{len(p.offset)} offsets given for {cropped} cropped axes "
                             f"(axis {axis} of a {len(data)}-axis bottom); give one offset, "
                             "or one per cropped axis")
        if len(ref) < len(data):
            raise self.error(f"reference bottom {shape_str(ref)} has fewer axes than the data "
                             f"bottom {shape_str(data)}")
        offsets = [0 if not p.offset else p.offset[0 if len(p.offset) == 1 else i]
                   for i in range(cropped)]
        for i, off in enumerate(offsets):
            d = axis + i
            if data[d] - off < ref[d]:
                raise self.error(f"the crop of axis {d} is out of bounds: size {ref[d]} at "
                                 f"offset {off} does not fit in {data[d]}")
        return axis, offsets

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        data, ref = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis, _ = self._offsets(data, ref)
        return [data[:axis] + ref[axis:len(data)]]

    def forward(self, x: Tensor, ref: Tensor) -> tuple[Tensor]:
        axis, offsets = self._offsets(x.shape, ref.shape)
        index = [slice(None)] * axis + [slice(off, off + ref.shape[axis + i])
                                        for i, off in enumerate(offsets)]
        return (x[tuple(index)],)


def _legacy_axis(layer: Layer, p, legacy: str, num_axes: int) -> int:
    """Concat's concat_dim / Slice's slice_dim: a non-negative alias of ``axis``."""
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise layer.error(f"either axis or {legacy} should be given; not both")
        value = getattr(p, legacy)
        if value >= num_axes:
            raise layer.error(f"{legacy} {value} is out of range for a {num_axes}-axis blob")
        return value
    return canonical_axis(p.axis, num_axes, layer.error)


@register("Concat")
class Concat(Layer):
    num_bottoms = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("either axis or concat_dim should be given; not both")

    def _axis(self, shapes: Sequence[Sequence[int]]) -> int:
        first = tuple(shapes[0])
        axis = _legacy_axis(self, self.param.concat_param, "concat_dim", len(first))
        for i, shape in enumerate(shapes[1:], 1):
            if len(shape) != len(first) or any(a != b for j, (a, b) in enumerate(zip(first, shape))
                                               if j != axis):
                raise self.error(f"all bottoms must have one shape except on axis {axis}: "
                                 f"bottom 0 is {shape_str(first)}, bottom {i} is "
                                 f"{shape_str(shape)}")
        return axis

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        axis = self._axis(bottom_shapes)
        top = list(bottom_shapes[0])
        top[axis] = sum(shape[axis] for shape in bottom_shapes)
        return [tuple(top)]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor]:
        axis = self._axis([b.shape for b in bottoms])
        top = torch.cat(bottoms, dim=axis)
        # torch.cat takes its layout from the first bottom's strides, which are ambiguous
        # for a batch of one: channels-last bottoms give a channels-last top.
        if top.dim() == 4 and all(b.is_contiguous(memory_format=torch.channels_last)
                                  and b.shape[1] > 1 for b in bottoms):
            top = top.contiguous(memory_format=torch.channels_last)
        return (top,)


@register("Slice")
class Slice(Layer):
    """Split bottom along ``axis`` at ``slice_point``s, or into equal parts."""
    num_tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("either axis or slice_dim should be given; not both")

    def _sizes(self, shape: Sequence[int]) -> tuple[int, list[int]]:
        p = self.param.slice_param
        axis = _legacy_axis(self, p, "slice_dim", len(shape))
        n_tops, size = len(self.param.top), shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != n_tops - 1:
                raise self.error(f"{len(points)} slice points for {n_tops} tops; expected "
                                 f"{n_tops - 1}")
            bounds = [0] + points + [size]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in sizes[:-1]) or sizes[-1] < 0:
                raise self.error(f"slice points {points} must increase and lie within axis "
                                 f"{axis} of size {size}")
            return axis, sizes
        if size % n_tops:
            raise self.error(f"{n_tops} tops do not evenly divide axis {axis} of size {size}")
        return axis, [size // n_tops] * n_tops

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis, sizes = self._sizes(shape)
        return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        axis, sizes = self._sizes(x.shape)
        return tuple(torch.split(x, sizes, dim=axis))


@register("Split")
class Split(Layer):
    """Tops that share the bottom's data (Caffe's ShareData: no copy of large blobs);
    the bottom's diff is the sum of the tops' diffs."""
    num_tops = (1, None)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(x.view_as(x) for _ in self.param.top)


@register("Flatten")
class Flatten(Layer):
    """Merge axes ``axis`` .. ``end_axis`` (inclusive) into one."""

    def _span(self, shape: Sequence[int]) -> tuple[int, int]:
        p = self.param.flatten_param
        start = canonical_axis(p.axis, len(shape), self.error)
        end = canonical_axis(p.end_axis, len(shape), self.error, "end_axis")
        if end < start:
            raise self.error(f"end_axis {end} comes before axis {start}")
        return start, end

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        start, end = self._span(shape)
        return [shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        start, end = self._span(x.shape)
        return (x.flatten(start, end),)


@register("Reshape")
class Reshape(Layer):
    """Caffe's Reshape: ``shape`` dims replace bottom axes [axis, axis + num_axes);
    0 copies the bottom's dim, -1 is inferred from the count."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.reshape_param
        dims = list(p.shape.dim)
        if dims.count(-1) > 1:
            raise self.error("the new shape contains several -1 dims; at most one may be "
                             "inferred")
        if any(d < -1 for d in dims):
            raise self.error(f"dims must be >= -1, got {dims}")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {p.num_axes}")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]

    def _top_shape(self, shape: Shape) -> Shape:
        p = self.param.reshape_param
        dims = list(p.shape.dim)
        n = len(shape)
        # Negative axis counts from the end, -1 meaning "after the last axis".
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error(f"axis {p.axis} is out of range for a {n}-axis bottom")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error(f"axis {start} + num_axes {p.num_axes} exceeds the bottom's "
                             f"{n} axes")
        new = list(dims)
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise self.error(f"dim {i} is 0 (copy) but the bottom has no axis "
                                     f"{start + i}")
                new[i] = shape[start + i]
        top = list(shape[:start]) + new + list(shape[end:])
        total = count(shape)
        if -1 in new:
            known = count([d for d in top if d != -1])
            if known == 0 or total % known:
                raise self.error(f"cannot infer the -1 dim: bottom count {total} is not a "
                                 f"multiple of {known}")
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise self.error(f"the new shape {shape_str(top)} has {count(top)} elements; "
                             f"the bottom {shape_str(shape)} has {total}")
        return tuple(top)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (x.reshape(self._top_shape(tuple(x.shape))),)


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms (so they are not net outputs); no tops, no gradient."""
    num_bottoms = (1, None)
    num_tops = (0, 0)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return []

    def forward(self, *bottoms: Tensor) -> tuple[()]:
        return ()


@register("Tile")
class Tile(Layer):
    """Repeat the block of axes ``axis``.. ``tiles`` times along ``axis``."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be given")
        if p.tiles <= 0:
            raise self.error(f"tiles must be > 0, got {p.tiles}")
        self.tiles = p.tiles

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = list(bottom_shapes[0])
        axis = canonical_axis(self.param.tile_param.axis, len(shape), self.error)
        shape[axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        axis = canonical_axis(self.param.tile_param.axis, x.dim(), self.error)
        repeats = [1] * x.dim()
        repeats[axis] = self.tiles
        return (x.repeat(repeats),)


ReductionOp = caffe_pb2.ReductionParameter


@register("Reduction")
class Reduction(Layer):
    """Reduce all axes from ``axis`` on (SUM, ASUM, SUMSQ, MEAN), times ``coeff``."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.reduction_param
        if p.operation not in (ReductionOp.SUM, ReductionOp.ASUM, ReductionOp.SUMSQ,
                               ReductionOp.MEAN):
            raise self.error(f"unknown reduction operation {p.operation}")
        self.operation, self.coeff = p.operation, p.coeff

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis = canonical_axis(self.param.reduction_param.axis, len(shape), self.error)
        return [shape[:axis]]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        axis = canonical_axis(self.param.reduction_param.axis, x.dim(), self.error)
        flat = x.reshape(tuple(x.shape[:axis]) + (-1,))
        if self.operation == ReductionOp.ASUM:
            y = flat.abs().sum(-1)
        elif self.operation == ReductionOp.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1)
        coeff = self.coeff / flat.shape[-1] if self.operation == ReductionOp.MEAN else self.coeff
        return (y if coeff == 1 else y * coeff,)
