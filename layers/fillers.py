"""Caffe's weight fillers (include/caffe/filler.hpp), drawing from torch's RNG.

``fill(filler_param, shape, error)`` returns a new float32 CPU tensor. The
formulas, the fan definitions (fan_in = count / shape[0], fan_out = count /
shape[1]) and the parameter checks are Caffe's; the random streams are
torch's, so values are not Caffe's bit for bit -- except ``constant`` and
``bilinear``, which are deterministic and computed in float32 as Caffe does.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.axes import count as blob_count

ErrorFactory = Callable[[str], NetError]
INT_MAX = 2**31 - 1
FillerParameter = caffe_pb2.FillerParameter


def constant_filler(value: float) -> FillerParameter:
    return FillerParameter(type="constant", value=value)


def fill(param: FillerParameter, shape: Sequence[int], error: ErrorFactory) -> Tensor:
    """A tensor of ``shape`` filled as Caffe's filler ``param.type`` would fill it."""
    shape = tuple(int(d) for d in shape)
    if blob_count(shape) == 0:
        raise error(f"cannot fill an empty blob of shape {shape}")
    if blob_count(shape) > INT_MAX:
        # Caffe's Blob::Reshape refuses these too; past 2^63 torch cannot even size them.
        raise error(f"a blob of shape {shape} would hold {blob_count(shape)} values, more "
                    f"than Caffe's limit of INT_MAX ({INT_MAX})")
    kind = param.type
    filler = _FILLERS.get(kind)
    if filler is None:
        raise error(f"unknown filler type {kind!r}; expected one of {', '.join(_FILLERS)}")
    if kind != "gaussian" and param.sparse != -1:
        raise error(f"filler {kind!r} does not support sparse (only gaussian does)")
    return filler(param, shape, error)


def _constant(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    return torch.full(shape, param.value, dtype=torch.float32)


def _uniform(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    if param.min > param.max:
        raise error(f"uniform filler needs min <= max, got min {param.min} > max {param.max}")
    return torch.empty(shape, dtype=torch.float32).uniform_(param.min, param.max)


def _gaussian(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    if param.std <= 0:
        raise error(f"gaussian filler needs std > 0, got {param.std}")
    if param.sparse < -1:
        raise error(f"gaussian filler sparse must be >= -1, got {param.sparse}")
    data = torch.empty(shape, dtype=torch.float32).normal_(param.mean, param.std)
    if param.sparse >= 0:
        # Caffe: on average `sparse` non-zero inputs per output (shape[0] outputs).
        data.mul_(torch.empty(shape, dtype=torch.float32).bernoulli_(param.sparse / shape[0]))
    return data


def _positive_unitball(param: FillerParameter, shape: tuple[int, ...],
                       error: ErrorFactory) -> Tensor:
    data = torch.rand(shape, dtype=torch.float32)
    rows = data.reshape(shape[0], -1)
    rows.div_(rows.sum(dim=1, keepdim=True))
    return data


def _fan(param: FillerParameter, shape: tuple[int, ...]) -> float:
    n = blob_count(shape)
    fan_in = n // shape[0]
    fan_out = n // shape[1] if len(shape) > 1 else n
    if param.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _xavier(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    scale = math.sqrt(3.0 / _fan(param, shape))
    return torch.empty(shape, dtype=torch.float32).uniform_(-scale, scale)


def _msra(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    std = math.sqrt(2.0 / _fan(param, shape))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std)


def _bilinear(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    if len(shape) != 4:
        raise error(f"bilinear filler needs a 4-axis blob, got shape {shape}")
    height, width = shape[2], shape[3]
    if height != width:
        raise error(f"bilinear filler needs a square kernel, got {height}x{width}")
    f = math.ceil(width / 2.0)
    # Caffe (after BVLC/caffe#5713) centres at (width - 1) / (2f), in double, stored as float.
    c = torch.tensor((width - 1) / (2.0 * f), dtype=torch.float32)
    x = torch.arange(width, dtype=torch.float32)
    profile = 1 - torch.abs(x / f - c)
    kernel = profile[:, None] * profile[None, :]
    return kernel.expand(shape).contiguous()


def _identity(param: FillerParameter, shape: tuple[int, ...], error: ErrorFactory) -> Tensor:
    """fyu/caffe-dilation's context-module initialisation (Yu & Koltun 2016, sec. 3): the
    centre tap maps input channel a to output b with C / c_out when a*C // c_in equals
    b*C // c_out (C = num_groups, the classes; default c_out), every other weight is
    N(0, std^2) noise; with c_in = c_out = C the layer starts as the identity."""
    if len(shape) != 4:
        raise error(f"identity filler needs a 4-axis (convolution) blob, got shape {shape}")
    if param.std < 0:
        raise error(f"identity filler needs std >= 0, got {param.std}")
    outputs, inputs, height, width = shape
    groups = param.num_groups or outputs
    if groups < 0:
        raise error(f"identity filler needs num_groups >= 0, got {groups}")
    data = torch.empty(shape, dtype=torch.float32).normal_(0.0, param.std) if param.std \
        else torch.zeros(shape, dtype=torch.float32)
    out_group = torch.arange(outputs)[:, None] * groups // outputs
    in_group = torch.arange(inputs)[None, :] * groups // inputs
    centre = data[:, :, height // 2, width // 2]
    centre[out_group == in_group] = groups / outputs
    return data


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
    "identity": _identity,
}
