"""nets/dilation_train.py: the nets fyu/dilation's train.py writes, built and trained here.

The nets are checked for what train.py/network.py put in them, built on small
image/label lists, and a reduced-width front-end net with its train.py solver
is trained with ``fcnwild train`` and resumed from a snapshot bit for bit (the
solver sets no random_seed, as train.py's does not: only the snapshot's data
positions and RNG states can make the resumed run match).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from solver_cases import weights

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.dilation_data import write_bin
from fcnwild.layers.fillers import fill
from fcnwild.nets.dilation_train import TrainOptions, make_net, write_training_files
from fcnwild.nets.net import Net
from fcnwild.tools import train_cmd
from fcnwild.tools.cli import main

NARROW = dict(block_widths=(2, 2, 4, 4, 4), fc_width=8)


def write_images(folder: Path, count: int, size=(40, 44), classes: int = 3) -> tuple[Path, Path]:
    """Random RGB PNGs and label PNGs (with some 255) listed by absolute path."""
    rng = np.random.RandomState(7)
    images, labels = [], []
    for i in range(count):
        h, w = size[0] + i, size[1] - i
        image, label = folder / f"img{i}.png", folder / f"lab{i}.png"
        cv2.imwrite(str(image), rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
        ids = rng.randint(0, classes, (h, w))
        ids[rng.rand(h, w) < 0.1] = 255
        cv2.imwrite(str(label), ids.astype(np.uint8))
        images.append(image)
        labels.append(label)
    image_list, label_list = folder / "images.txt", folder / "labels.txt"
    image_list.write_text("".join(f"{p}\n" for p in images))
    label_list.write_text("".join(f"{p}\n" for p in labels))
    return image_list, label_list


def layer(net: caffe_pb2.NetParameter, name: str) -> caffe_pb2.LayerParameter:
    return next(lp for lp in net.layer if lp.name == name)


def test_the_frontend_nets_are_train_py_s():
    options = TrainOptions("frontend", 21, "train_img.txt", "train_lab.txt", "val_img.txt",
                           "val_lab.txt", train_batch=14)
    train, test = make_net(options, True), make_net(options, False)
    data = train.layer[0]
    assert (data.type, list(data.top)) == ("ImageLabelData", ["data", "label"])
    p = data.image_label_data_param
    assert (p.image_list_path, p.batch_size, p.shuffle) == ("train_img.txt", 14, True)
    assert (list(p.label_slice.dim), list(p.label_slice.stride),
            list(p.label_slice.offset)) == ([16, 16], [8, 8], [186, 186])
    assert p.padding == p.REFLECT
    assert data.transform_param.crop_size == 500 and data.transform_param.mirror
    assert not test.layer[0].transform_param.mirror
    assert list(test.layer[0].transform_param.mean_value) == pytest.approx(
        [102.93, 111.36, 116.52])
    names = [lp.name for lp in train.layer]
    assert "pool3" in names and "pool4" not in names and "pool5" not in names
    assert layer(train, "conv5_1").convolution_param.dilation == [2]
    assert layer(train, "fc6").convolution_param.dilation == [4]
    assert list(layer(train, "drop7").top) == ["fc7"]            # in place, as NetSpec writes
    assert layer(train, "final").convolution_param.weight_filler.std == pytest.approx(0.001)
    assert names[-1] == "loss" and [lp.name for lp in test.layer][-2:] == ["loss", "accuracy"]
    loss = layer(train, "loss")
    assert list(loss.bottom) == ["final", "label"]
    assert loss.loss_param.ignore_label == 255
    assert loss.loss_param.normalization == caffe_pb2.LossParameter.VALID


def test_the_context_nets_are_train_py_s():
    options = TrainOptions("context", 5, "bins.txt", "labels.txt", label_shape=(66, 66),
                           layers=10)
    net = make_net(options, True)
    p = net.layer[0].bin_label_data_param
    assert (list(p.label_slice.dim), list(p.label_slice.stride)) == ([66, 66], [8, 8])
    assert not p.HasField("mirror") and p.shuffle                  # the layer mirrors
    convs = [lp for lp in net.layer if lp.type == "Convolution"]
    assert [lp.name for lp in convs] == ["ctx_conv1_1", "ctx_conv1_2"] + \
        [f"ctx_conv{i}_1" for i in range(2, 8)] + ["ctx_fc1", "ctx_final"]
    assert [list(lp.convolution_param.dilation) for lp in convs] == \
        [[], []] + [[2 ** (i - 1)] for i in range(2, 8)] + [[], []]
    assert [list(lp.convolution_param.pad) for lp in convs][2:-1] == \
        [[2 ** (i - 1)] for i in range(2, 8)] + [[1]]
    for lp in convs:
        filler = lp.convolution_param.weight_filler
        assert (filler.type, filler.num_groups) == ("identity", 5)
        assert lp.convolution_param.num_output == 5
    up = make_net(TrainOptions("context", 5, "b", "l", label_shape=(32, 40), up=True), True)
    assert list(up.layer[0].bin_label_data_param.label_slice.stride) == [1, 1]
    assert list(layer(up, "loss").bottom) == ["upsample", "label"]


def test_the_identity_filler_starts_the_context_module_as_the_identity():
    torch.manual_seed(0)
    square = fill(caffe_pb2.FillerParameter(type="identity", num_groups=4, std=0.01),
                  (4, 4, 3, 3), NetError)
    identity = torch.zeros(4, 4, 3, 3, dtype=torch.bool)
    identity[range(4), range(4), 1, 1] = True
    assert torch.equal(square[identity], torch.ones(4))
    assert 0 < square[~identity].abs().max() < 0.1 and square[~identity].std() < 0.02
    wide = fill(caffe_pb2.FillerParameter(type="identity", num_groups=2, std=0),
                (4, 2, 1, 1), NetError)                       # 2 classes, 4 outputs
    np.testing.assert_array_equal(wide[:, :, 0, 0].numpy(),
                                  [[0.5, 0], [0.5, 0], [0, 0.5], [0, 0.5]])


def test_the_context_net_builds_and_starts_near_the_identity(tmp_path):
    rng = np.random.RandomState(2)
    names = []
    for i in range(3):
        write_bin(tmp_path / f"f{i}.bin", rng.rand(3, 4, 4).astype(np.float32) + 0.5)
        cv2.imwrite(str(tmp_path / f"l{i}.png"), rng.randint(0, 3, (32, 32)).astype(np.uint8))
        names.append((tmp_path / f"f{i}.bin", tmp_path / f"l{i}.png"))
    (tmp_path / "bins.txt").write_text("\n".join(str(b) for b, _ in names))
    (tmp_path / "labels.txt").write_text("\n".join(str(lab) for _, lab in names))
    options = TrainOptions("context", 3, str(tmp_path / "bins.txt"),
                           str(tmp_path / "labels.txt"), train_batch=2, label_shape=(32, 32),
                           layers=6, up=True)
    net = Net(make_net(options, True), phase="train")
    net.forward()
    assert net.blobs["upsample"].data.shape == (2, 3, 32, 32)
    assert net.blobs["label"].data.shape == (2, 1, 32, 32)
    features, scores = net.blobs["data"].data, net.blobs["ctx_final"].data
    assert np.abs(scores - features).max() < 0.5 * np.abs(features).min()


def test_the_frontend_net_builds_at_train_py_s_crop_and_up_fails_as_there(tmp_path):
    image_list, label_list = write_images(tmp_path, 2)
    options = TrainOptions("frontend", 3, str(image_list), str(label_list), train_batch=1,
                           **NARROW)
    net = Net(make_net(options, True), phase="train")
    assert net.blobs["data"].data.shape == (1, 3, 500, 500)
    assert net.blobs["final"].data.shape == (1, 3, 16, 16)
    assert net.blobs["label"].data.shape == (1, 1, 16, 16)
    with pytest.raises(NetError) as info:     # network.py keeps the stride-8 label with --up
        Net(make_net(TrainOptions("frontend", 3, str(image_list), str(label_list), up=True,
                                  **NARROW), True), phase="train")
    assert "loss" in str(info.value)


def test_the_command_line_writes_train_py_s_files(tmp_path, capsys):
    image_list, label_list = write_images(tmp_path, 1)
    work = tmp_path / "training"
    assert main(["dilation-train", "frontend", "--work_dir", str(work), "--weights", "vgg_conv.caffemodel",
                 "--train_image", str(image_list), "--train_label", str(label_list),
                 "--test_image", str(image_list), "--test_label", str(label_list),
                 "--classes", "19", "--crop_size", "628"]) == 0
    printed = capsys.readouterr().out
    assert f"fcnwild train --solver {work / 'frontend_vgg_solver.txt'} --weights " \
           "vgg_conv.caffemodel" in printed
    solver = text_format.Parse((work / "frontend_vgg_solver.txt").read_text(),
                               caffe_pb2.SolverParameter())
    assert (solver.train_net, list(solver.test_net), solver.snapshot_prefix) == (
        str(work / "frontend_vgg_train_net.txt"), [str(work / "frontend_vgg_test_net.txt")],
        str(work / "snapshots/frontend_vgg"))
    assert (solver.base_lr, solver.momentum, solver.stepsize) == pytest.approx((1e-4, 0.9,
                                                                                100000))
    net = text_format.Parse((work / "frontend_vgg_train_net.txt").read_text(),
                            caffe_pb2.NetParameter())
    assert list(net.layer[0].image_label_data_param.label_slice.dim) == [32, 32]
    assert main(["dilation-train", "context", "--train_image", "a", "--train_label", "b",
                 "--classes", "3"]) == 2
    assert "label_shape" in capsys.readouterr().err
    assert main(["dilation-train", "frontend", "--train_image", "a", "--train_label", "b",
                 "--classes", "3"]) == 2
    assert "give --weights" in capsys.readouterr().err


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return train_cmd.run(parser.parse_args(argv + ["--quiet"]))


def test_a_train_py_frontend_trains_and_resumes_bit_identically(tmp_path):
    image_list, label_list = write_images(tmp_path, 5)
    options = TrainOptions("frontend", 3, str(image_list), str(label_list), str(image_list),
                           str(label_list), train_batch=1, test_batch=1, crop_size=388,
                           **NARROW)
    paths = write_training_files(options, tmp_path / "training")
    net = Net(paths["train_net"], phase="train")
    rng = np.random.RandomState(3)
    for blobs in net.params.values():
        for blob in blobs:
            fan_in = blob.data[0].size if blob.data.ndim > 1 else 10
            blob.data = (rng.randn(*blob.data.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    net.save(tmp_path / "init.caffemodel")

    solver = text_format.Parse(paths["solver"].read_text(), caffe_pb2.SolverParameter())
    assert not solver.HasField("random_seed")
    solver.max_iter, solver.snapshot, solver.display = 3, 2, 0
    solver.test_iter[0] = 1                 # train.py's test_interval 100: a test at 0 only
    straight = tmp_path / "straight.prototxt"
    straight.write_text(text_format.MessageToString(solver))
    solver.snapshot_prefix = str(tmp_path / "resumed/run")
    resumed = tmp_path / "resumed.prototxt"
    resumed.write_text(text_format.MessageToString(solver))

    assert _train(["--solver", str(straight), "--weights", str(tmp_path / "init.caffemodel")]) == 0
    prefix = tmp_path / "training/snapshots/frontend_vgg"
    assert _train(["--solver", str(resumed), "--snapshot",
                   f"{prefix}_iter_2.solverstate"]) == 0
    start = weights(tmp_path / "init.caffemodel")
    middle = weights(Path(f"{prefix}_iter_2.caffemodel"))
    end, again = weights(Path(f"{prefix}_iter_3.caffemodel")), \
        weights(tmp_path / "resumed/run_iter_3.caffemodel")
    assert not np.array_equal(start["conv1_1"][0], middle["conv1_1"][0])
    assert not np.array_equal(middle["final"][0], end["final"][0])
    assert end.keys() == again.keys()
    assert all(np.array_equal(x, y) for name in end for x, y in zip(end[name], again[name]))


def test_the_shipped_image_label_twins_differ_from_their_nets_only_in_the_data_layer():
    from fcnwild.tools.experiment.paper import all_files
    files = {relative: message for relative, message, _ in all_files()}
    twins = [r for r in files if r.endswith("_imagelabel.prototxt") and "solver" not in r]
    assert "frontend/train_net_imagelabel.prototxt" in twins and len(twins) == 12
    for relative in twins:
        twin, net = files[relative], files[relative.replace("_imagelabel", "")]
        assert twin.layer[1:] == net.layer[1:], relative
        seg, data = net.layer[0].segmentation_data_param, twin.layer[0]
        p, t = data.image_label_data_param, data.transform_param
        assert (data.type, t.crop_size, t.mirror, p.shuffle, p.batch_size) == (
            "ImageLabelData", seg.crop_size, seg.mirror, seg.shuffle, seg.batch_size)
        assert list(t.mean_value) == list(seg.mean)
        assert list(p.label_slice.dim) == [seg.crop_size - 2 * seg.margin] * 2
        assert list(p.label_slice.offset) == [seg.margin] * 2
        assert p.image_list_path.startswith("${") and p.image_list_path.endswith("_IMAGE_LIST}")
