"""pycaffe's Classifier and Detector on a small net: predictions equal the net run on
crops prepared by hand (transpose, channel swap, raw scale, mean)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fcnwild.caffe as caffe
from solver_cases import write

NET = """name: "tiny_classifier"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
MEAN = np.array([100.0, 110.0, 120.0])


@pytest.fixture
def model(tmp_path):
    path = write(tmp_path / "net.prototxt", NET)
    caffe.set_random_seed(3)
    net = caffe.Net(str(path), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    return str(path), str(tmp_path / "w.caffemodel"), net


def _by_hand(net, crops):
    """The net's probabilities for H x W x RGB crops in [0, 1]: BGR, * 255, - mean, CHW."""
    batch = np.stack([(c[:, :, ::-1] * 255 - MEAN).transpose(2, 0, 1) for c in crops])
    return net.forward_all(data=batch)["prob"]


def test_classifier_center_crop_and_oversampling(model):
    path, weights, net = model
    classifier = caffe.Classifier(path, weights, image_dims=(10, 10), mean=MEAN,
                                  raw_scale=255, channel_swap=(2, 1, 0))
    assert isinstance(classifier, caffe.Net)
    rng = np.random.RandomState(0)
    images = [rng.rand(10, 10, 3).astype(np.float32) for _ in range(3)]
    center = classifier.predict(images, oversample=False)
    assert center.shape == (3, 4)
    np.testing.assert_allclose(center, _by_hand(net, [im[1:9, 1:9] for im in images]),
                               rtol=1e-5, atol=1e-6)
    oversampled = classifier.predict(images)
    for image, prediction in zip(images, oversampled):
        crops = [image[i:i + 8, j:j + 8] for i, j in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
        crops += [crop[:, ::-1] for crop in crops]
        np.testing.assert_allclose(prediction, _by_hand(net, crops).mean(0), rtol=1e-5,
                                   atol=1e-6)


def test_detector_classifies_windows(model, tmp_path):
    path, weights, net = model
    rng = np.random.RandomState(1)
    pixels = (rng.rand(12, 14, 3) * 255).astype(np.uint8)
    image_file = str(tmp_path / "im.png")
    Image.fromarray(pixels).save(image_file)
    detector = caffe.Detector(path, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 8, 8]), np.array([4, 6, 12, 14])]
    detections = detector.detect_windows([(image_file, windows)])
    assert [d["filename"] for d in detections] == [image_file] * 2
    image = pixels.astype(np.float32) / 255
    expected = _by_hand(net, [image[0:8, 0:8], image[4:12, 6:14]])
    for detection, window, probs in zip(detections, windows, expected):
        assert detection["window"] is window
        np.testing.assert_allclose(detection["prediction"], probs, rtol=1e-4, atol=1e-5)


def test_detector_context_padding_fills_outside_the_image_with_the_mean(model):
    path, weights, _ = model
    detector = caffe.Detector(path, weights, mean=MEAN, raw_scale=255,
                              channel_swap=(2, 1, 0), context_pad=2)
    assert tuple(detector.crop_dims) == (8, 8, 3)
    np.testing.assert_allclose(detector.crop_mean[0, 0], MEAN[::-1] / 255)
    image = np.full((12, 12, 3), 0.5, np.float32)
    crop = detector.crop(image, np.array([0, 0, 6, 6]))
    assert crop.shape == (8, 8, 3)
    # The window touches the top-left corner: its context there lies outside the image.
    np.testing.assert_allclose(crop[0, 0], MEAN[::-1] / 255)
    np.testing.assert_allclose(crop[-1, -1], 0.5, rtol=1e-5)
