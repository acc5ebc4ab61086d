"""fcnwild.caffe.coord_map: pycaffe's coordinate mapping through spatial layers.

A map (axis, a, b) sends bottom coordinate x to a * x + b; a conv with kernel k,
stride s and pad p maps (1/s, (p - (k - 1)/2) / s), a deconv (s, (k - 1)/2 - p).
"""
from __future__ import annotations

import numpy as np
import pytest

from fcnwild.caffe.coord_map import (
    AxisMismatchException,
    UndefinedMapException,
    compose,
    coord_map,
    coord_map_from_to,
    crop,
    inverse,
)
from fcnwild.caffe.net_spec import NetSpec, layers as L, params as P


def conv_pool_deconv(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0, dilation=1) -> NetSpec:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad,
                           dilation=dilation)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [2 * s for s in dstride] if isinstance(dstride, list) else 2 * dstride
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(
        num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad))
    return n


def test_single_layer_maps():
    n = conv_pool_deconv(ks=5, stride=2, pad=3)
    ax, a, b = coord_map(n.conv.fn)
    assert (ax, a, b) == (1, [0.5], [(3 - 2) / 2])
    assert coord_map(n.deconv.fn) == (1, [2], [1.5])
    assert coord_map(L.ReLU(n.conv).fn) == (None, 1, 0)
    ax, a, b = coord_map(L.Crop(n.deconv, n.data, crop_param=dict(axis=2, offset=[4])).fn)
    assert (ax, a, list(b)) == (1, 1, [-4])
    with pytest.raises(UndefinedMapException):
        coord_map(L.InnerProduct(n.conv, num_output=3).fn)


def test_matched_pool_and_deconv_give_identity_or_a_shift():
    n = conv_pool_deconv()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)
    n = conv_pool_deconv(pool=4, dstride=4)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -1)


def test_pass_through_and_1x1_conv_keep_the_map():
    n = conv_pool_deconv()
    reference = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    for top in (n.relu, n.conv1x1):
        assert coord_map_from_to(top, n.data) == reference


@pytest.mark.parametrize("pad", [1, 7])
def test_conv_padding_shifts_one_way_deconv_padding_the_other(pad):
    n = conv_pool_deconv()
    _, a, b = coord_map_from_to(n.deconv, n.data)
    n = conv_pool_deconv(pad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b - pad)
    n = conv_pool_deconv(dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b + pad)
    n = conv_pool_deconv(pad=pad, dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b)


def test_dilation_counts_as_the_dilated_kernel_extent():
    dilated = conv_pool_deconv(ks=3, dilation=2)
    wide = conv_pool_deconv(ks=5)
    assert coord_map_from_to(dilated.deconv, dilated.data) == \
        coord_map_from_to(wide.deconv, wide.data)
    assert coord_map_from_to(wide.deconv, wide.data) == (1, 1, 1)


def test_every_bottom_and_top_of_a_layer_maps_alike():
    n = conv_pool_deconv()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10,
                                            kernel_size=5, stride=2, pad=0)
    assert coord_map_from_to(n.conv_data, n.data) == coord_map_from_to(n.conv_aux, n.aux)


def test_anisotropic_maps_are_their_isotropic_parts():
    n3 = conv_pool_deconv(ks=3, stride=1, pad=0)
    n5 = conv_pool_deconv(ks=5, stride=2, pad=10)
    n35 = conv_pool_deconv(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    ax3, a3, b3 = coord_map_from_to(n3.deconv, n3.data)
    ax5, a5, b5 = coord_map_from_to(n5.deconv, n5.data)
    ax35, a35, b35 = coord_map_from_to(n35.deconv, n35.data)
    assert ax3 == ax5 == ax35 == 1
    assert (a35[0], b35[0]) == (a3, b3)
    assert (a35[1], b35[1]) == (a5, b5)


def test_nd_conv_maps_each_spatial_axis():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1],
                           pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(num_output=10, kernel_size=4,
                                                              stride=2, pad=0))
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and np.all(a == 1)
    assert list(b) == [0, -1, -2]


@pytest.mark.parametrize("offset", [0, 6])
def test_a_crop_layer_shifts_by_its_offset(offset):
    n = conv_pool_deconv()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    assert coord_map_from_to(n.crop, n.data) == (ax, a, b + offset)


def test_crop_emits_axis_and_offsets():
    n = conv_pool_deconv(pad=3)
    n.score = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert (layer.type, list(layer.bottom)) == ("Crop", ["deconv", "data"])
    assert (layer.crop_param.axis, list(layer.crop_param.offset)) == (2, [3])


def test_crop_of_pooling_param_dicts():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.conv = L.Convolution(n.data, convolution_param=dict(num_output=1, kernel_size=3, pad=5))
    n.pool = L.Pooling(n.conv, pooling_param=dict(pool=P.Pooling.MAX, kernel_size=2, stride=2))
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=4,
                                                          stride=2))
    assert coord_map_from_to(n.up, n.data) == (1, 1, -5)


def test_unconnected_mismatched_and_impossible_crops_are_refused():
    n = conv_pool_deconv()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        coord_map_from_to(n.ip, n.data)
    n = conv_pool_deconv(pool=3, dstride=2)
    with pytest.raises(AssertionError, match="scale mismatch on crop"):
        crop(n.deconv, n.data)
    n = conv_pool_deconv(dpad=10)
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        crop(n.deconv, n.data)
    n = conv_pool_deconv(ks=2)
    with pytest.raises(AssertionError, match="cannot crop noninteger offset"):
        crop(n.deconv, n.data)
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad_h=1, pad_w=1)
    with pytest.raises(AssertionError, match="legacy _h/_w"):
        coord_map_from_to(n.conv, n.data)


def test_compose_and_inverse():
    assert compose((None, 1, 0), (2, 0.5, 1)) == (2, 0.5, 1)
    assert compose((2, 2, 1), (None, 1, 0)) == (2, 2, 1)
    assert compose((1, 2, 1), (1, 3, 4)) == (1, 6, 9)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    assert inverse((1, 2.0, 3.0)) == (1, 0.5, -1.5)
    assert compose((1, 2.0, 3.0), inverse((1, 2.0, 3.0))) == (1, 1, 0)
