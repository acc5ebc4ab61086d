"""pycaffe's coordinate maps between the tops of a net spec, and ``crop`` built on them.

A map ``(axis, a, b)`` sends an input coordinate ``x`` to the output coordinate
``a * x + b`` on every spatial axis from ``axis`` on; ``(None, 1, 0)`` is the
identity of pointwise layers. Composing the maps along the two paths from a
common ancestor tells how two tops are aligned, which is what FCN's ``crop``
needs to emit Crop layers with the right offsets.
"""
from __future__ import annotations

import numpy as np

from fcnwild.caffe.net_spec import Function, Top, layers as L

PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Dropout',
                       'Eltwise', 'ELU', 'Log', 'LRN', 'Exp', 'MVN', 'Power',
                       'ReLU', 'PReLU', 'Scale', 'Sigmoid', 'Split', 'TanH',
                       'Threshold']

CoordMap = tuple[int | None, float | np.ndarray, float | np.ndarray]

_LEGACY_2D_KEYS = {'pad_h', 'pad_w', 'kernel_h', 'kernel_w', 'stride_h', 'stride_w'}


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (e.g. InnerProduct)."""


class AxisMismatchException(Exception):
    """Two maps act on different first spatial axes and cannot be composed."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, effective kernel extent, pad) of a Convolution,
    Deconvolution, Im2col or Pooling layer; the extent counts dilation,
    ``(kernel_size - 1) * dilation + 1``. Parameters are read from the layer's
    ``convolution_param`` / ``pooling_param`` dict or from its keyword arguments."""
    params = fn.params.get('convolution_param', fn.params.get('pooling_param', fn.params))
    if _LEGACY_2D_KEYS & (set(fn.params) | set(params)):
        raise AssertionError('cropping does not support legacy _h/_w params')
    axis = params.get('axis', 1)
    kernel = np.array(params['kernel_size'], ndmin=1)
    dilation = np.array(params.get('dilation', 1), ndmin=1)
    return (axis, np.array(params.get('stride', 1), ndmin=1),
            (kernel - 1) * dilation + 1,
            np.array(params.get('pad', 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get('crop_param', fn.params)
    return params.get('axis', 2), np.array(params.get('offset', 0), ndmin=1)


def coord_map(fn: Function) -> CoordMap:
    """The map from the layer's bottom coordinates to its top coordinates."""
    if fn.type_name in ['Convolution', 'Pooling', 'Im2col']:
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == 'Deconvolution':
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == 'Crop':
        axis, offset = crop_params(fn)
        # Crop's axis is the first cropped axis; a map's axis is the one before it.
        return axis - 1, 1, -offset
    raise UndefinedMapException


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """``next_map`` after ``base_map``: scales multiply, and the further shift is
    scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map: CoordMap) -> CoordMap:
    """The map back from top to bottom coordinates."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _walk_back(top: Top, maps: dict, frontier: set) -> None:
    """Give each mappable bottom of ``top`` its map (``top``'s composed with the
    layer's) and queue it; a layer without a map ends the walk there."""
    try:
        layer_map = coord_map(top.fn)
    except UndefinedMapException:
        return
    bottoms = top.fn.inputs
    # A Crop's second bottom only gives the output size; its coordinates do not
    # map to the top's.
    if top.fn.type_name == 'Crop':
        bottoms = bottoms[:1]
    for bottom in bottoms:
        maps[bottom] = compose(maps[top], layer_map)
        frontier.add(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from ``top_from``'s coordinates to ``top_to``'s, through their
    nearest common ancestor: walk back from ``top_from`` composing maps, then
    from ``top_to`` until a blob of the first walk is reached."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        _walk_back(frontier.pop(), from_maps, frontier)

    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        _walk_back(top, to_maps, frontier)

    raise RuntimeError('Could not compute map between tops; are they '
                       'connected by spatial layers?')


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cutting ``top_from`` to ``top_to``'s extent, aligned by the
    coordinate map between them (axis and offsets as pycaffe computes them)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(np.asarray(a) == 1):
        raise AssertionError(f'scale mismatch on crop (a = {a})')
    if not np.all(np.asarray(b) <= 0):
        raise AssertionError(f'cannot crop negative offset (b = {b})')
    if not np.all(np.round(b) == b):
        raise AssertionError(f'cannot crop noninteger offset (b = {b})')
    offset = [int(o) for o in -np.round(np.asarray(b, dtype=float).reshape(-1))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
