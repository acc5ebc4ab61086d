"""SPP: spatial pyramid pooling (He et al. 2014) built from Caffe's Pooling layer.

Level l (bins = 2^l per axis) pools with kernel = stride = ceil(H / bins) and
pad = (kernel * bins - H + 1) // 2 under Pooling's own rules (CEIL rounding with its
padding clip); the levels are flattened to (N, C * bins_h * bins_w) and concatenated
level by level. With ``pyramid_height: 1`` Caffe returns the pooling output itself,
(N, C, 1, 1). As in Caffe the internal Pooling layers are built in the TRAIN phase,
so STOCHASTIC pooling samples in either phase.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.layers.axes import shape_str
from fcnwild.layers.base import TRAIN, Layer, LayerContext, Shape
from fcnwild.layers.pooling import Pooling
from fcnwild.layers.registry import register

_POOL_METHODS = {
    caffe_pb2.SPPParameter.MAX: caffe_pb2.PoolingParameter.MAX,
    caffe_pb2.SPPParameter.AVE: caffe_pb2.PoolingParameter.AVE,
    caffe_pb2.SPPParameter.STOCHASTIC: caffe_pb2.PoolingParameter.STOCHASTIC,
}


@register("SPP")
class SPP(Layer):

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.spp_param
        if p.pyramid_height == 0:
            raise self.error("spp_param.pyramid_height must be > 0")
        self.levels = p.pyramid_height
        self.method = _POOL_METHODS[p.pool]
        # Pooling layers per (H, W): their geometry depends on the bottom size.
        self._pyramids: dict[tuple[int, int], list[Pooling]] = {}
        self._pyramid(bottom_shapes[0])

    def _pyramid(self, shape: Sequence[int]) -> list[Pooling]:
        if len(shape) != 4:
            raise self.error(f"SPP needs a 4-axis (N, C, H, W) bottom, got {shape_str(shape)}")
        size = (int(shape[2]), int(shape[3]))
        if min(size) <= 0:
            raise self.error(f"the bottom's height and width must be > 0, got {shape_str(shape)}")
        if size not in self._pyramids:
            self._pyramids[size] = [self._level(level, size) for level in range(self.levels)]
        return self._pyramids[size]

    def _level(self, level: int, size: tuple[int, int]) -> Pooling:
        bins = 2 ** level
        kernel = [math.ceil(n / bins) for n in size]
        pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, size)]
        param = caffe_pb2.LayerParameter(name=self.name, type="Pooling", bottom=["x"],
                                         top=["y"])
        param.pooling_param.pool = self.method
        param.pooling_param.kernel_h, param.pooling_param.kernel_w = kernel
        param.pooling_param.stride_h, param.pooling_param.stride_w = kernel
        param.pooling_param.pad_h, param.pooling_param.pad_w = pad
        pooling = Pooling(param, LayerContext(phase=TRAIN, source=self.ctx.source))
        pooling.setup([(1, 1) + size])
        return pooling

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        outs = [pooling.reshape([shape])[0] for pooling in self._pyramid(shape)]
        if self.levels == 1:
            return [outs[0]]
        return [(shape[0], sum(math.prod(out[1:]) for out in outs))]

    def forward(self, x: Tensor) -> tuple[Tensor]:
        pooled = [pooling(x)[0] for pooling in self._pyramid(x.shape)]
        if self.levels == 1:
            return (pooled[0],)
        return (torch.cat([y.flatten(1) for y in pooled], dim=1),)
