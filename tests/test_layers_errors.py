"""Bad layer parameters and bottoms give a NetError (or DatasetError) naming the layer."""
from __future__ import annotations

import pytest
import torch
from layer_testing import make_layer

from fcnwild.base.errors import DatasetError, NetError

CONV = 'name: "c1" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {} }}'
POOL = 'name: "p1" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {} }}'

BAD_SETUPS = [
    # (prototxt, bottom shapes, words the message must contain)
    (CONV.format("num_output: 4 kernel_size: 0"), [(1, 3, 8, 8)], "kernel size must be > 0"),
    (CONV.format("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3"), [(1, 3, 8, 8)],
     "not both"),
    (CONV.format("num_output: 4 kernel_h: 3"), [(1, 3, 8, 8)], "kernel_w must both be given"),
    (CONV.format("kernel_size: 3"), [(1, 3, 8, 8)], "num_output"),
    (CONV.format("num_output: 4"), [(1, 3, 8, 8)], "kernel_size must be given once"),
    (CONV.format("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3"),
     [(1, 3, 8, 8)], "once per spatial axis"),
    (CONV.format("num_output: 4 kernel_size: 3 group: 2"), [(1, 3, 8, 8)], "divisible by group"),
    (CONV.format("num_output: 3 kernel_size: 3 group: 3"), [(1, 6, 8, 8)], "no error expected"),
    (CONV.format("num_output: 5 kernel_size: 3 group: 3"), [(1, 6, 8, 8)], "multiple of group"),
    (CONV.format("num_output: 4 kernel_size: 3 stride: 0"), [(1, 3, 8, 8)], "stride must be > 0"),
    (CONV.format("num_output: 4 kernel_size: 3 axis: 4"), [(1, 3, 8, 8)], "out of range"),
    (CONV.format("num_output: 4 kernel_size: 3"), [(1, 3, 2, 2, 2, 2)], "1 to 3 spatial axes"),
    (CONV.format("num_output: 4 kernel_size: 3 weight_filler { type: \"nope\" }"),
     [(1, 3, 8, 8)], "unknown filler type"),
    (CONV.format("num_output: 4 kernel_size: 3 weight_filler { type: \"xavier\" sparse: 2 }"),
     [(1, 3, 8, 8)], "does not support sparse"),
    ('name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 3 '
     'kernel_h: 4 kernel_w: 2 weight_filler { type: "bilinear" } }', [(1, 3, 8, 8)],
     "square kernel"),
    (POOL.format("kernel_size: 3 pad: 3"), [(1, 3, 8, 8)], "smaller than the kernel"),
    (POOL.format("global_pooling: true kernel_size: 3"), [(1, 3, 8, 8)], "cannot be given"),
    (POOL.format("global_pooling: true stride: 2"), [(1, 3, 8, 8)], "only pad 0 and stride 1"),
    (POOL.format("stride: 2"), [(1, 3, 8, 8)], "kernel_size, or both kernel_h and kernel_w"),
    (POOL.format("pool: STOCHASTIC kernel_size: 3 pad: 1"), [(1, 3, 8, 8)], "only for MAX and AVE"),
    ('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { }',
     [(2, 3)], "num_output"),
    ('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', None,
     "cannot be learnable"),
    ('name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', [(1, 3, 4, 4)],
     "odd local_size"),
    ('name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 1 }',
     [(1, 3)], "dropout_ratio"),
    ('name: "exp" type: "Exp" bottom: "x" top: "y" exp_param { base: -2 }', [(1, 3)],
     "strictly positive"),
    ('name: "log" type: "Log" bottom: "x" top: "y" log_param { base: 1 }', [(1, 3)],
     "no logarithm"),
    ('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { coeff: 1 }',
     [(2, 3), (2, 3)], "one coefficient per bottom"),
    ('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
     'eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [(2, 3), (2, 3)], "only used by"),
    ('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }',
     [(2, 3)], "several -1"),
    ('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 }', [(2, 3)],
     "tiles must be given"),
    ('name: "c" type: "Concat" bottom: "a" top: "y" concat_param { axis: 1 concat_dim: 1 }',
     [(2, 3)], "not both"),
    ('name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" top: "prob"',
     None, "second (prob) top"),
    ('name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "L" }',
     None, "allow_python=True"),
    ('name: "c1" type: "Convolution" bottom: "x" top: "y" top: "z" '
     'convolution_param { num_output: 1 kernel_size: 1 }', None, "as many tops as bottoms"),
    ('name: "s1" type: "Sigmoid" bottom: "x" bottom: "z" top: "y"', None, "1 bottom"),
]


@pytest.mark.parametrize("text,shapes,words", BAD_SETUPS, ids=[w for _, _, w in BAD_SETUPS])
def test_bad_parameters_raise_net_error_naming_the_layer(text, shapes, words) -> None:
    if words == "no error expected":     # the group check must not reject a valid setup
        make_layer(text, shapes)
        return
    with pytest.raises(NetError) as info:
        make_layer(text, shapes)
    message = str(info.value)
    assert words in message
    assert info.value.layer is not None and f"layer '{info.value.layer}'" in message
    assert "test.prototxt" in message


BAD_RESHAPES = [
    (CONV.format("num_output: 4 kernel_size: 5"), [(1, 3, 8, 8)], [(1, 3, 3, 3)],
     "gives no output"),
    (CONV.format("num_output: 4 kernel_size: 3"), [(1, 3, 8, 8)], [(1, 5, 8, 8)], "channels"),
    ('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 }',
     [(2, 3, 4)], [(2, 5, 4)], "the weights expect 12"),
    ('name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { axis: 2 offset: 3 }',
     [(1, 1, 8, 8), (1, 1, 6, 6)], [(1, 1, 8, 8), (1, 1, 6, 6)], "out of bounds"),
    ('name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "y" '
     'crop_param { axis: 1 offset: 1 offset: 1 }',
     [(1, 2, 8, 8), (1, 1, 6, 6)], [(1, 2, 8, 8), (1, 1, 6, 6)], "2 offsets given for 3"),
    ('name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y"',
     [(1, 2, 4, 4), (1, 2, 5, 4)], [(1, 2, 4, 4), (1, 2, 5, 4)], "except on axis 1"),
    ('name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 3 '
     'slice_point: 4 }', [(1, 6)], [(1, 6)], "2 slice points for 2 tops"),
    ('name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" top: "c"', [(1, 8)], [(1, 8)],
     "evenly divide"),
    ('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 5 dim: -1 } }',
     [(2, 3)], [(2, 3)], "cannot infer"),
    ('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 4 } }',
     [(2, 3)], [(2, 3)], "has 8 elements"),
    ('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 }',
     [(1, 3, 8)], [(1, 3, 8)], "4-axis"),
    ('name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss"',
     [(2, 5, 4, 4), (2, 1, 4, 3)], [(2, 5, 4, 4), (2, 1, 4, 3)], "number of labels"),
    ('name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"',
     [(2, 5)], [(2, 5), (3, 5)], "first (batch) dimension"),
    ('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y"',
     [(2, 3), (2, 3)], [(2, 3), (2, 4)], "one shape"),
    ('name: "sc" type: "Scale" bottom: "x" top: "y"', [(2, 3, 4)], [(2, 4, 4)],
     "does not match"),
    ('name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "a" accuracy_param { top_k: 6 }',
     [(2, 5), (2,)], [(2, 5), (2,)], "top_k 6"),
]


@pytest.mark.parametrize("text,setup_shapes,shapes,words", BAD_RESHAPES,
                         ids=[w for *_, w in BAD_RESHAPES])
def test_bottoms_that_do_not_fit_raise_net_error(text, setup_shapes, shapes, words) -> None:
    layer = make_layer(text, setup_shapes)
    with pytest.raises(NetError) as info:
        layer.reshape(shapes)
    assert words in str(info.value)
    assert f"layer '{layer.name}'" in str(info.value)


def test_out_of_range_labels_raise_instead_of_reading_garbage() -> None:
    layer = make_layer('name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                       'loss_param { ignore_label: 255 }', [(1, 3, 2, 2), (1, 1, 2, 2)])
    scores = torch.zeros(1, 3, 2, 2)
    ok = torch.tensor([[[[0.0, 2.0], [255.0, 1.0]]]])
    layer(scores, ok)                      # ignore_label passes
    with pytest.raises(NetError, match="label 7 is out of range: expected 0..2 or ignore_label 255"):
        layer(scores, torch.tensor([[[[0.0, 7.0], [255.0, 1.0]]]]))


def test_input_layer_forward_explains_that_the_net_feeds_it() -> None:
    layer = make_layer('name: "in" type: "Input" top: "data" input_param { shape { dim: 1 } }', [])
    with pytest.raises(NetError, match="the Net feeds its tops"):
        layer()


def test_hdf5_data_errors_name_the_file(tmp_path) -> None:
    import h5py
    import numpy as np

    def build(source: str, tops=("data", "label")):
        tops_text = " ".join(f'top: "{t}"' for t in tops)
        return make_layer(f'name: "h5" type: "HDF5Data" {tops_text} hdf5_data_param '
                          f'{{ source: "{source}" batch_size: 2 }}', [], base_dir=tmp_path)

    with pytest.raises(DatasetError, match="HDF5 source list not found") as info:
        build("missing.txt")
    assert info.value.layer == "h5"

    (tmp_path / "list.txt").write_text("nowhere.h5\n")
    with pytest.raises(DatasetError, match="HDF5 file not found"):
        build("list.txt")

    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5["data"] = np.zeros((4, 3), np.float32)
        h5["label"] = np.zeros((5,), np.float32)
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(DatasetError, match="same number of rows") as info:
        build("list.txt")
    assert info.value.file.endswith("a.h5")
    with pytest.raises(DatasetError, match="no dataset 'weights'"):
        build("list.txt", tops=("data", "weights"))

    (tmp_path / "bad.h5").write_text("not hdf5")
    (tmp_path / "list.txt").write_text("bad.h5\n")
    with pytest.raises(DatasetError, match="cannot read HDF5 file"):
        build("list.txt")
