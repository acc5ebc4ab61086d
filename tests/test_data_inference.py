"""Tiled whole-image prediction against a literal transcription of fyu/dilation's test.py."""
from __future__ import annotations

import argparse
import json
import types

import cv2
import numpy as np
import pytest
from data_layouts import make_cityscapes

from fcnwild.base.errors import NetError
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import PredictionWriter
from fcnwild.data.inference import TiledPredictor, evaluate_net, interp_map
from fcnwild.data.score_predictions import score_predictions
from fcnwild.nets.net import Net
from fcnwild.nets.tile_size import budget_predictor, forward_bytes
from fcnwild.tools import eval_cmd

MEAN = np.array([72.39, 82.91, 73.16], np.float32)


def interp_map_reference(prob, zoom, width, height):
    """fyu/dilation util.interp_map as written (loops), with the one-past-the-edge read clamped."""
    out = np.zeros((prob.shape[0], height, width), dtype=np.float32)
    last_r, last_c = prob.shape[1] - 1, prob.shape[2] - 1
    for c in range(prob.shape[0]):
        for h in range(height):
            for w in range(width):
                r0 = h // zoom
                r1 = min(r0 + 1, last_r)
                c0 = w // zoom
                c1 = min(c0 + 1, last_c)
                rt = float(h) / zoom - r0
                ct = float(w) / zoom - c0
                v0 = rt * float(prob[c, r1, c0]) + (1 - rt) * float(prob[c, r0, c0])
                v1 = rt * float(prob[c, r1, c1]) + (1 - rt) * float(prob[c, r0, c1])
                out[c, h, w] = (1 - ct) * v0 + ct * v1
    return out


class StridedFakeNet:
    """A stand-in deploy net: score c at output (i, j) is a fixed function of the input pixel
    (margin + zoom*i, margin + zoom*j), like a front-end whose receptive field is its margin."""

    def __init__(self, input_size, margin, zoom, classes=4, batch=1):
        self.inputs, self.outputs = ["data"], ["prob"]
        self.margin, self.zoom, self.classes = margin, zoom, classes
        self.blobs = {"data": types.SimpleNamespace(data=np.zeros((batch, 3) + input_size, np.float32))}
        self.batches = []

    def reshape_inputs(self, shapes):
        self.blobs["data"].data = np.zeros(shapes["data"], np.float32)

    def forward(self, **inputs):
        x = inputs["data"]
        assert x.shape == self.blobs["data"].data.shape
        self.batches.append(x.shape[0])
        m, z = self.margin, self.zoom
        h, w = x.shape[2] - 2 * m, x.shape[3] - 2 * m
        seen = x[:, :, m:m + h:z, m:m + w:z]
        feature = seen[:, 0] * 0.7 - seen[:, 1] * 0.2 + seen[:, 2] * 0.1
        scores = np.stack([np.sin(feature / 9.0 + c) for c in range(self.classes)], axis=1)
        return {"prob": scores.astype(np.float32)}


def dilation_test_py(net, image_rgb, margin, zoom):
    """fyu/dilation test.py's test_image loop for one image, with a batch-1 net."""
    input_dims = net.blobs["data"].data.shape
    _, _, input_height, input_width = input_dims
    output_height, output_width = input_height - 2 * margin, input_width - 2 * margin
    image = image_rgb[:, :, ::-1].astype(np.float32) - MEAN
    image_size = image.shape
    image = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REFLECT_101)
    num_tiles_h = image_size[0] // output_height + (1 if image_size[0] % output_height else 0)
    num_tiles_w = image_size[1] // output_width + (1 if image_size[1] % output_width else 0)
    prediction = []
    for h in range(num_tiles_h):
        col_prediction = []
        for w in range(num_tiles_w):
            offset = [output_height * h, output_width * w]
            tile = image[offset[0]:offset[0] + input_height, offset[1]:offset[1] + input_width, :]
            margin_ = [0, input_height - tile.shape[0], 0, input_width - tile.shape[1]]
            tile = cv2.copyMakeBorder(tile, margin_[0], margin_[1], margin_[2], margin_[3],
                                      cv2.BORDER_REFLECT_101)
            prob = net.forward(data=tile.transpose([2, 0, 1])[None])["prob"][0]
            col_prediction.append(prob)
        prediction.append(np.concatenate(col_prediction, axis=2))
    prob = np.concatenate(prediction, axis=1)
    if zoom > 1:
        zoom_prob = interp_map_reference(prob, zoom, image_size[1], image_size[0])
    else:
        zoom_prob = prob[:, :image_size[0], :image_size[1]]
    return zoom_prob, np.argmax(zoom_prob.transpose([1, 2, 0]), axis=2)


def test_interp_map_matches_the_loop_version():
    rng = np.random.default_rng(0)
    prob = rng.random((3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(interp_map(prob, 8, 50, 37), interp_map_reference(prob, 8, 50, 37))
    np.testing.assert_array_equal(interp_map(prob, 8, 56, 40), interp_map_reference(prob, 8, 56, 40))


@pytest.mark.parametrize("zoom,image_shape,batch", [(8, (37, 70), 3), (8, (32, 48), 2), (1, (29, 41), 4)])
def test_tiling_matches_dilation_test_py(zoom, image_shape, batch):
    margin, out = 6, 16
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, image_shape + (3,), dtype=np.uint8)
    expected_scores, expected = dilation_test_py(
        StridedFakeNet((out + 2 * margin,) * 2, margin, zoom), image, margin, zoom)
    net = StridedFakeNet((out + 2 * margin,) * 2, margin, zoom)
    predictor = TiledPredictor(net, MEAN, margin=margin, batch_size=batch)
    np.testing.assert_array_equal(predictor.scores(image), expected_scores)
    tiles = -(-image_shape[0] // out) * -(-image_shape[1] // out)
    assert sum(net.batches) == tiles and max(net.batches) == min(batch, tiles)
    np.testing.assert_array_equal(predictor.predict(image), expected)


def test_whole_tiles_equal_one_pass_over_the_padded_image():
    # Independent of test.py: when tiles cover the image exactly, stitching must equal one
    # forward pass over the whole reflect-padded image.
    margin, zoom, out = 5, 4, 12
    image = np.random.default_rng(2).integers(0, 256, (24, 36, 3), dtype=np.uint8)
    predictor = TiledPredictor(StridedFakeNet((out + 2 * margin,) * 2, margin, zoom), MEAN, margin=margin)
    whole = cv2.copyMakeBorder(image[:, :, ::-1].astype(np.float32) - MEAN, *(margin,) * 4, cv2.BORDER_REFLECT_101)
    big = StridedFakeNet(whole.shape[:2], margin, zoom)
    prob = big.forward(data=whole.transpose(2, 0, 1)[None])["prob"][0]
    np.testing.assert_array_equal(predictor.scores(image), interp_map(prob, zoom, 36, 24))


def test_evaluate_net_scores_and_saves(tmp_path):
    make_cityscapes(tmp_path, cities={"aachen": 2}, size=(20, 30))
    dataset = open_dataset(f"cityscapes:{tmp_path}", "val")
    predictor = TiledPredictor(StridedFakeNet((28, 28), 6, 8, classes=19), MEAN, margin=6, batch_size=2)
    result = evaluate_net(predictor, dataset, writer=PredictionWriter(tmp_path / "out", dataset.label_space),
                          progress=False)
    assert result.num_images == 2 and result.confusion.counts.sum() == sum(
        (dataset.label(i) != 255).sum() for i in range(2))
    assert (tmp_path / "out/labelIds" / f"{dataset.names()[1]}.png").is_file()
    with pytest.raises(NetError, match="4 channels but label space cityscapes19 has 19 classes"):
        evaluate_net(TiledPredictor(StridedFakeNet((28, 28), 6, 8), MEAN, margin=6), dataset, progress=False)
    with pytest.raises(NetError, match="is not larger than twice the margin"):
        TiledPredictor(StridedFakeNet((28, 28), 6, 8), MEAN, margin=14)


MINI_FRONT_END = """
name: "mini_front_end"
input: "data"
input_shape { dim: 1 dim: 3 dim: 22 dim: 22 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "final" type: "Convolution" bottom: "pool1" top: "final"
  convolution_param { num_output: 19 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "final" top: "prob" }
"""  # margin 3 (two unpadded 3x3 convs around a stride-2 pool), score map at stride 2


def test_real_net_tiles_like_test_py_and_eval_command(tmp_path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(MINI_FRONT_END)
    Net(str(prototxt), phase="TEST").save(str(tmp_path / "w.caffemodel"))  # filler-initialised weights
    image = np.random.default_rng(4).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    expected_scores, expected = dilation_test_py(
        Net(str(prototxt), weights=str(tmp_path / "w.caffemodel"), phase="TEST"), image, 3, 2)
    predictor = TiledPredictor(Net(str(prototxt), weights=str(tmp_path / "w.caffemodel"), phase="TEST"),
                               MEAN, margin=3, batch_size=4)
    np.testing.assert_allclose(predictor.scores(image), expected_scores, rtol=1e-5, atol=1e-7)

    make_cityscapes(tmp_path / "cs", cities={"aachen": 2}, size=(20, 30))
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    rc = eval_cmd.run(parser.parse_args([
        "--dataset", f"cityscapes:{tmp_path / 'cs'}", "--split", "val", "--model", str(prototxt),
        "--weights", str(tmp_path / "w.caffemodel"), "--margin", "3", "--batch-size", "3",
        "--save-predictions", str(tmp_path / "pred"), "--json", str(tmp_path / "r.json"), "--no-progress"]))
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 2
    # The saved label-id PNGs score exactly like the run that wrote them.
    dataset = open_dataset(f"cityscapes:{tmp_path / 'cs'}", "val")
    rescored = score_predictions(dataset, tmp_path / "pred/labelIds", progress=False)
    assert rescored.confusion.counts.tolist() == json.loads((tmp_path / "r.json").read_text())["confusion"]


def test_forward_bytes_adds_blobs_im2col_and_weights_with_a_copy_of_the_largest(tmp_path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(MINI_FRONT_END)
    net = Net(str(prototxt), phase="TEST")
    h, w = 30, 42
    conv1 = (h - 2) * (w - 2)
    pool1 = (h - 2) // 2 * ((w - 2) // 2)
    final = ((h - 2) // 2 - 2) * ((w - 2) // 2 - 2)
    blobs = 3 * h * w + 4 * conv1 + 4 * pool1 + 19 * final * 2          # data, conv1, pool1, final, prob
    im2col = max(3 * 9 * conv1, 4 * 9 * final)
    weights = (3 * 9 * 4 + 4) + (4 * 9 * 19 + 19)                        # conv1, final
    assert forward_bytes(net, "data", h, w) == 4 * (blobs + im2col + weights + 4 * 9 * 19)
    assert net.blobs["prob"].shape == (1, 19, (h - 2) // 2 - 2, (w - 2) // 2 - 2)


@pytest.mark.parametrize("image_shape", [(23, 37), (32, 48), (41, 30)])
def test_the_budgets_tile_predicts_what_the_deploys_own_tiles_predict(tmp_path, image_shape):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(MINI_FRONT_END)
    Net(str(prototxt), phase="TEST").save(str(tmp_path / "w.caffemodel"))
    image = np.random.default_rng(5).integers(0, 256, image_shape + (3,), dtype=np.uint8)

    def net():
        return Net(str(prototxt), weights=str(tmp_path / "w.caffemodel"), phase="TEST")
    expected = TiledPredictor(net(), MEAN, margin=3).scores(image)   # 16 px output tiles
    choices = []
    for budget in (1 << 30, 60_000, 25_000, 12_000):
        predictor, choice = budget_predictor(net(), MEAN, 3, image_shape, budget=budget)
        assert choice.bytes <= budget
        np.testing.assert_allclose(predictor.scores(image), expected, rtol=1e-5, atol=1e-7)
        choices.append(choice)
    whole = choices[0]
    assert whole.tiles == (1, 1) and whole.input_size[0] >= image_shape[0] + 6
    areas = [c.input_size[0] * c.input_size[1] for c in choices]
    assert areas == sorted(areas, reverse=True) and areas[-1] < areas[0]
    assert choices[-1].tiles[0] * choices[-1].tiles[1] > 1
    with pytest.raises(NetError, match="no input size fits a memory budget"):
        budget_predictor(net(), MEAN, 3, image_shape, budget=2_000)
    # An explicit tile (the deploy's own 22 px) is the fyu/dilation tiling itself.
    predictor, choice = budget_predictor(net(), MEAN, 3, image_shape, tile=22)
    assert choice.input_size == (22, 22)
    np.testing.assert_array_equal(predictor.scores(image), expected)
    with pytest.raises(NetError, match="multiple of the net's output stride 2"):
        budget_predictor(net(), MEAN, 3, image_shape, tile=23)
