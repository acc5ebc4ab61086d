"""BatchReindex, ContrastiveLoss, Embed, Filter, Im2col, InfogainLoss, Parameter and SPP
beyond the reference cases: errors, empty selections, other shapes and axis counts,
the custom gradients, and BlobProto files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.autograd import gradcheck

from fcnwild.base import caffe_pb2
from fcnwild.base.blob_proto import read_blob_proto
from fcnwild.base.errors import FcnwildError, NetError
from fcnwild.layers.im2col import _strided_windows
from fcnwild.layers.loss import _ContrastiveLossFunction, _InfogainLossFunction
from fcnwild.nets.net import Net
from layer_testing import make_layer

torch.manual_seed(0)


def test_embed_truncates_float_indices_and_refuses_out_of_range_ones() -> None:
    layer = make_layer('name: "e" type: "Embed" bottom: "i" top: "y" embed_param { '
                       'num_output: 2 input_dim: 3 weight_filler { type: "gaussian" } }', [(2,)])
    y = layer(torch.tensor([2.9, 0.0]))[0]
    torch.testing.assert_close(y, layer.blobs[0][[2, 0]] + layer.blobs[1])
    for bad in (3.0, -1.0):
        with pytest.raises(NetError, match=r"layer 'e'.*index .* is out of range"):
            layer(torch.tensor([0.0, bad]))


def test_embed_needs_sizes() -> None:
    with pytest.raises(NetError, match="input_dim > 0"):
        make_layer('name: "e" type: "Embed" bottom: "i" top: "y" embed_param { '
                   'num_output: 2 }', [(2,)])


def test_batch_reindex_refuses_an_index_outside_the_batch() -> None:
    layer = make_layer('name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y"', [])
    with pytest.raises(NetError, match=r"layer 'r'.*index 3 is out of range for a batch of 3"):
        layer(torch.randn(3, 2), torch.tensor([0.0, 3.0]))
    with pytest.raises(NetError, match="exactly 1 axis"):
        layer.reshape([(3, 2), (2, 1)])


def test_filter_with_nothing_selected_gives_empty_tops_and_zero_diffs() -> None:
    layer = make_layer('name: "f" type: "Filter" bottom: "a" bottom: "s" top: "fa"', [])
    assert layer.reshape([(4, 3), (4, 1)]) == [(4, 3)]          # before a forward: N
    a = torch.randn(4, 3, requires_grad=True)
    top = layer(a, torch.zeros(4, 1))[0]
    assert tuple(top.shape) == (0, 3) and layer.reshape([(4, 3), (4, 1)]) == [(0, 3)]
    top.sum().backward()
    assert torch.equal(a.grad, torch.zeros(4, 3))
    # Any non-zero selector value selects, as Caffe's test on the float does.
    assert layer(a, torch.tensor([[0.5], [0.0], [-2.0], [0.0]]))[0].shape[0] == 2


def test_filter_checks_counts_and_selector_shape() -> None:
    with pytest.raises(NetError, match="one top per bottom except the selector"):
        make_layer('name: "f" type: "Filter" bottom: "a" bottom: "s" top: "x" top: "y"')
    layer = make_layer('name: "f" type: "Filter" bottom: "a" bottom: "s" top: "fa"')
    with pytest.raises(NetError, match="all axes but the first must be 1"):
        layer.reshape([(4, 3), (4, 2)])
    with pytest.raises(NetError, match="selector's first dimension 5"):
        layer.reshape([(4, 3), (5,)])


def im2col_reference(x: np.ndarray, kernel, stride, pad, dilation) -> np.ndarray:
    """Caffe's im2col_nd_cpu, element by element: (N, C * prod(kernel), *out)."""
    spatial = x.shape[2:]
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1
           for n, k, s, p, d in zip(spatial, kernel, stride, pad, dilation)]
    cols = np.zeros((x.shape[0], x.shape[1] * math.prod(kernel), *out))
    offsets = list(np.ndindex(*kernel))
    for n, c in np.ndindex(*x.shape[:2]):
        for k, offset in enumerate(offsets):
            for pos in np.ndindex(*out):
                src = [q * s - p + o * d for q, s, p, o, d in
                       zip(pos, stride, pad, offset, dilation)]
                if all(0 <= v < size for v, size in zip(src, spatial)):
                    cols[(n, c * len(offsets) + k) + pos] = x[(n, c) + tuple(src)]
    return cols


@pytest.mark.parametrize("shape,conv,kernel,stride,pad,dilation", [
    ((1, 2, 4, 3, 5), "kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 "
     "stride: 3 pad: 1 pad: 0 pad: 2 dilation: 1 dilation: 1 dilation: 2",
     (2, 3, 2), (2, 1, 3), (1, 0, 2), (1, 1, 2)),
    ((1, 3, 9), "kernel_size: 3 stride: 2 pad: 2 dilation: 2", (3,), (2,), (2,), (2,)),
])
def test_im2col_on_1d_and_3d_matches_caffes_loop(shape, conv, kernel, stride, pad,
                                                  dilation) -> None:
    layer = make_layer(f'name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param '
                       f'{{ {conv} }}', [shape])
    x = torch.randn(shape, dtype=torch.float64)
    ref = im2col_reference(x.numpy(), kernel, stride, pad, dilation)
    assert layer.reshape([shape]) == [ref.shape]
    np.testing.assert_array_equal(layer(x)[0].numpy(), ref)
    assert gradcheck(lambda t: layer(t)[0], (x.clone().requires_grad_(),))


def test_im2col_strided_windows_agree_with_unfold_in_2d() -> None:
    layer = make_layer('name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { '
                       'kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 dilation: 2 }', [(2, 3, 7, 8)])
    x = torch.randn(2, 3, 7, 8)
    top = layer(x)[0]
    windows = _strided_windows(x, layer.geometry, top.shape[2:])
    torch.testing.assert_close(windows.reshape(top.shape), top, rtol=0, atol=0)


def test_im2col_channel_axis_and_errors() -> None:
    layer = make_layer('name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { '
                       'kernel_size: 2 axis: 2 }', [(2, 3, 4, 5, 6)])
    assert layer.reshape([(2, 3, 4, 5, 6)]) == [(2, 3, 16, 4, 5)]
    with pytest.raises(NetError, match="gives no output"):
        make_layer('name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { '
                   'kernel_size: 5 }', [(1, 1, 3, 8)]).reshape([(1, 1, 3, 8)])
    with pytest.raises(NetError, match="no spatial axis"):
        make_layer('name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { '
                   'kernel_size: 2 axis: -1 }', [(2, 3)])


def spp(pool: str, height: int, shape) -> object:
    return make_layer(f'name: "s" type: "SPP" bottom: "x" top: "y" spp_param {{ '
                      f'pyramid_height: {height} pool: {pool} }}', [shape])


@pytest.mark.parametrize("size", [(7, 6), (13, 10), (4, 4), (9, 17)])
def test_spp_bins_every_level_over_the_whole_image(size) -> None:
    """Each level has bins x bins cells, the cell windows follow Caffe's kernel/pad rule
    and together cover the image (max over level 0 = the global max)."""
    shape = (2, 3) + size
    x = torch.randn(shape, dtype=torch.float64)
    y = spp("MAX", 3, shape)(x)[0]
    assert tuple(y.shape) == (2, 3 * 21)
    cells = x.new_empty(2, 3, 0)
    for level in range(3):
        bins = 2 ** level
        kernel = [math.ceil(n / bins) for n in size]
        pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, size)]
        level_cells = torch.empty(2, 3, bins, bins, dtype=torch.float64)
        for i, j in np.ndindex(bins, bins):
            rows = slice(max(i * kernel[0] - pad[0], 0), (i + 1) * kernel[0] - pad[0])
            cols = slice(max(j * kernel[1] - pad[1], 0), (j + 1) * kernel[1] - pad[1])
            level_cells[:, :, i, j] = x[:, :, rows, cols].amax(dim=(2, 3))
        cells = torch.cat([cells, level_cells.flatten(2)], dim=2)
    expected = torch.cat([cells[:, :, :1].flatten(1), cells[:, :, 1:5].flatten(1),
                          cells[:, :, 5:].flatten(1)], dim=1)
    torch.testing.assert_close(y, expected)


def test_spp_of_height_one_is_the_pooling_output_itself() -> None:
    y = spp("AVE", 1, (2, 3, 5, 7))(torch.ones(2, 3, 5, 7))[0]
    assert tuple(y.shape) == (2, 3, 1, 1) and torch.equal(y, torch.ones(2, 3, 1, 1))


def test_spp_on_an_image_smaller_than_the_bins_is_refused_like_caffe() -> None:
    """H = 3 with 4 bins: kernel 1, pad 1 >= kernel (Caffe's Pooling CHECK fails)."""
    with pytest.raises(NetError, match="layer 's'.*smaller than the kernel"):
        spp("MAX", 3, (1, 1, 3, 8))
    with pytest.raises(NetError, match="pyramid_height must be > 0"):
        spp("MAX", 0, (1, 1, 8, 8))


def test_contrastive_gradient_keeps_caffes_1e4_and_differs_from_the_exact_one() -> None:
    a = torch.tensor([[0.3, 0.1], [0.0, 0.2], [1.0, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    b = torch.zeros(3, 2, dtype=torch.float64)
    similar = torch.tensor([False, False, True])
    _ContrastiveLossFunction.apply(a, b, similar, 1.5, False).backward()
    d = torch.linalg.norm(a.detach(), dim=1)
    exact = torch.cat([(-(1.5 - d) / d)[:2, None] * a.detach()[:2], a.detach()[2:]]) / 3
    caffe_rule = torch.cat([(-(1.5 - d) / (d + 1e-4))[:2, None] * a.detach()[:2],
                            a.detach()[2:]]) / 3
    torch.testing.assert_close(a.grad, caffe_rule)
    # Relative to the exact derivative: 1e-4 / d smaller (d = 0.32 and 0.2 here).
    torch.testing.assert_close(a.grad[:2], exact[:2] * (d / (d + 1e-4))[:2, None])
    assert (a.grad[:2] - exact[:2]).abs().max() > 1e-5 * exact[:2].abs().max()


def test_contrastive_gradient_is_finite_for_identical_pairs() -> None:
    a = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    loss = _ContrastiveLossFunction.apply(a, a.detach(), torch.tensor([False, True]), 1.0, False)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.25) and torch.equal(a.grad, torch.zeros(2, 3,
                                                                                  dtype=a.dtype))


def test_contrastive_legacy_and_similar_pairs_have_the_exact_gradient() -> None:
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True) * 0.4
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True) * 0.4
    similar = torch.tensor([True, False, False, True])
    assert gradcheck(lambda u, v: _ContrastiveLossFunction.apply(u, v, similar, 1.0, True),
                     (a.detach().requires_grad_(), b.detach().requires_grad_()))


def test_contrastive_shape_rules() -> None:
    layer = make_layer('name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
                       'bottom: "y" top: "l"')
    assert layer.reshape([(4, 3), (4, 3), (4,)]) == [()]
    with pytest.raises(NetError, match="same C"):
        layer.reshape([(4, 3), (4, 2), (4,)])
    with pytest.raises(NetError, match="one value per pair"):
        layer.reshape([(4, 3), (4, 3), (4, 2)])


def test_infogain_gradient_is_exact_away_from_the_clamp() -> None:
    scores = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 3, 1], [2, 2, 0]])
    rows = torch.rand(4, 4, dtype=torch.float64)[labels].permute(0, 2, 1)
    valid = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    normalizer = torch.tensor(5.0, dtype=torch.float64)
    assert gradcheck(lambda s: _InfogainLossFunction.apply(s, rows, valid, normalizer)[0],
                     (scores,))


@pytest.mark.parametrize("text,bottoms,message", [
    ('top: "l" top: "p"', 2, "loss_weight must be given for both tops"),
    ('top: "l" loss_param { normalize: true }', 3, "normalize is deprecated"),
    ('top: "l"', 2, "infogain_loss_param.source"),
    ('top: "l" infogain_loss_param { source: "missing.binaryproto" }', 2, "missing.binaryproto"),
])
def test_infogain_errors_name_the_layer(text, bottoms, message, tmp_path) -> None:
    names = ' '.join(f'bottom: "{b}"' for b in ("s", "y", "H")[:bottoms])
    with pytest.raises(FcnwildError, match="layer 'ig'") as err:
        make_layer(f'name: "ig" type: "InfogainLoss" {names} {text}',
                   [(2, 3), (2,), (3, 3)][:bottoms], base_dir=tmp_path)
    assert message in str(err.value)


def test_infogain_h_must_fit_the_classes() -> None:
    layer = make_layer('name: "ig" type: "InfogainLoss" bottom: "s" bottom: "y" bottom: "H" '
                       'top: "l"', [(2, 3), (2,), (4, 4)])
    with pytest.raises(NetError, match="H must be 3x3"):
        layer.reshape([(2, 3), (2,), (4, 4)])


def test_parameter_top_is_its_blob_and_a_net_trains_it() -> None:
    text = ('name: "n" layer { name: "in" type: "Input" top: "t" input_param { shape { dim: 2 '
            'dim: 3 } } } layer { name: "p" type: "Parameter" top: "p" parameter_param { '
            'shape { dim: 2 dim: 3 } } } layer { name: "l" type: "EuclideanLoss" bottom: "p" '
            'bottom: "t" top: "l" }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="train")
    assert np.array_equal(net.params["p"][0].data, np.zeros((2, 3)))   # Caffe's zero blob
    target = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.params["p"][0].data = target + 1
    net.blobs["t"].data = target
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["p"].data, target + 1)
    np.testing.assert_allclose(net.params["p"][0].diff, np.full((2, 3), 0.5))
    np.testing.assert_allclose(net.blobs["p"].diff, net.params["p"][0].diff)


def write_blob_proto(path, **fields) -> None:
    path.write_bytes(caffe_pb2.BlobProto(**fields).SerializeToString())


def test_blob_proto_files_legacy_shape_double_data_and_errors(tmp_path) -> None:
    write_blob_proto(tmp_path / "legacy.binaryproto", num=1, channels=2, height=1, width=2,
                     data=[1, 2, 3, 4])
    assert read_blob_proto(tmp_path / "legacy.binaryproto").shape == (1, 2, 1, 2)
    write_blob_proto(tmp_path / "double.binaryproto", shape=caffe_pb2.BlobShape(dim=[3]),
                     double_data=[0.5, 1.5, 2.5])
    np.testing.assert_array_equal(read_blob_proto(tmp_path / "double.binaryproto"),
                                  np.array([0.5, 1.5, 2.5], dtype=np.float32))
    write_blob_proto(tmp_path / "short.binaryproto", shape=caffe_pb2.BlobShape(dim=[2, 2]),
                     data=[1, 2, 3])
    with pytest.raises(FcnwildError, match="short.binaryproto.*holds 3 values"):
        read_blob_proto(tmp_path / "short.binaryproto")
    (tmp_path / "junk.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(FcnwildError, match="not a binary BlobProto"):
        read_blob_proto(tmp_path / "junk.binaryproto")
