"""A miniature FCN training run in the style of the reference implementation
(fcn.berkeleyvision.org: net.py, solve.py, surgery.py, score.py, voc_layers.py), through
fcnwild.caffe, against the same flow through fcnwild's own Net and Solver.

NetSpec writes train/val prototxts around a Python data layer that reads a generated
image/label tree; SGDSolver + copy_from + bilinear surgery written into
``params[...].data`` + step + scoring over ``test_nets[0]`` after ``share_with``
(confusion histogram, IU). Both flows must produce the same losses and scores.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

import fcnwild.caffe as caffe
from fcnwild.caffe import layers as L, params as P
from fcnwild.caffe.coord_map import crop
from fcnwild.solvers import create_solver
from solver_cases import write

CLASSES = 3
MEAN = (104.00699, 116.66877, 122.67892)

# The data layer, written as voc_layers.py writes VOCSegDataLayer.
SEG_LAYERS = '''
import random

import numpy as np
from PIL import Image

import caffe


class SegDataLayer(caffe.Layer):
    """Load (input image, label image) pairs from a folder of PNGs."""

    def setup(self, bottom, top):
        params = eval(self.param_str)
        self.data_dir = params['data_dir']
        self.split = params['split']
        self.mean = np.array(params['mean'])
        self.random = params.get('randomize', True)
        self.seed = params.get('seed', None)
        if len(top) != 2:
            raise Exception("Need to define two tops: data and label.")
        if len(bottom) != 0:
            raise Exception("Do not define a bottom.")
        split_f = '{}/{}.txt'.format(self.data_dir, self.split)
        self.indices = open(split_f, 'r').read().splitlines()
        self.idx = 0
        if 'train' not in self.split:
            self.random = False
        if self.random:
            random.seed(self.seed)
            self.idx = random.randint(0, len(self.indices) - 1)

    def reshape(self, bottom, top):
        self.data = self.load_image(self.indices[self.idx])
        self.label = self.load_label(self.indices[self.idx])
        top[0].reshape(1, *self.data.shape)
        top[1].reshape(1, *self.label.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.data
        top[1].data[...] = self.label
        if self.random:
            self.idx = random.randint(0, len(self.indices) - 1)
        else:
            self.idx += 1
            if self.idx == len(self.indices):
                self.idx = 0

    def backward(self, top, propagate_down, bottom):
        pass

    def load_image(self, idx):
        im = Image.open('{}/images/{}.png'.format(self.data_dir, idx))
        in_ = np.array(im, dtype=np.float32)
        in_ = in_[:, :, ::-1]
        in_ -= self.mean
        in_ = in_.transpose((2, 0, 1))
        return in_

    def load_label(self, idx):
        im = Image.open('{}/labels/{}.png'.format(self.data_dir, idx))
        label = np.array(im, dtype=np.uint8)
        label = label[np.newaxis, ...]
        return label
'''

SOLVER = """train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 3
test_interval: 999999999
display: 0
average_loss: 20
lr_policy: "fixed"
base_lr: 1e-5
momentum: 0.99
iter_size: 1
max_iter: 100000
weight_decay: 0.0005
snapshot: 0
test_initialization: false
random_seed: 1701
"""


# --- the image/label tree -----------------------------------------------------------------
def make_tree(root, names, seed):
    """Images whose colour follows the class of each pixel (plus noise), labels with a
    border of ignored (255) pixels; two image sizes."""
    rng = np.random.RandomState(seed)
    colours = np.array([[40, 160, 40], [200, 60, 60], [60, 60, 220]], dtype=np.float64)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        h, w = (20, 24) if i % 2 else (24, 20)
        label = np.zeros((h, w), np.uint8)
        label[:, w // 3:] = 1
        label[h // 2:, 2 * w // 3:] = 2
        label = np.roll(label, rng.randint(-4, 5), axis=1)
        image = colours[label] + rng.normal(0, 25, (h, w, 3))
        label[0, :] = 255
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "labels" / f"{name}.png")


# --- net.py -------------------------------------------------------------------------------
def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                         weight_filler=dict(type="gaussian", std=0.1))
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def fcn(split, data_dir):
    n = caffe.NetSpec()
    pydata_params = dict(split=split, mean=MEAN, seed=1337, data_dir=data_dir)
    n.data, n.label = L.Python(module="seg_layers", layer="SegDataLayer", ntop=2,
                               param_str=str(pydata_params))
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 8, pad=20)
    n.pool1 = max_pool(n.relu1_1)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 16)
    n.pool2 = max_pool(n.relu2_1)
    n.fc6, n.relu6 = conv_relu(n.pool2, 32, ks=3, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop6, num_output=CLASSES, kernel_size=1, pad=0,
                               param=[dict(lr_mult=1, decay_mult=1),
                                      dict(lr_mult=2, decay_mult=0)],
                               weight_filler=dict(type="gaussian", std=0.01))
    n.upscore = L.Deconvolution(n.score_fr,
                                convolution_param=dict(num_output=CLASSES, kernel_size=8,
                                                       stride=4, bias_term=False),
                                param=[dict(lr_mult=0)])
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def base_net():
    """The "pretrained" classifier whose conv layers the FCN starts from."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 8)
    n.pool1 = max_pool(n.relu1_1)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 16)
    n.pool2 = max_pool(n.relu2_1)
    n.fc6, n.relu6 = conv_relu(n.pool2, 32, ks=3, pad=0)
    return n.to_proto()


# --- surgery.py ---------------------------------------------------------------------------
def upsample_filt(size):
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def interp(net, layers):
    for name in layers:
        m, k, h, w = net.params[name][0].data.shape
        if m != k and k != 1:
            raise Exception("input + output channels need to be the same or |output| == 1")
        if h != w:
            raise Exception("filters need to be square")
        net.params[name][0].data[range(m), range(k), :, :] = upsample_filt(h)


# --- score.py -----------------------------------------------------------------------------
def fast_hist(a, b, n):
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


def compute_hist(net, dataset, layer="score", gt="label"):
    n_cl = net.blobs[layer].channels
    hist = np.zeros((n_cl, n_cl))
    loss = 0
    for _ in dataset:
        net.forward()
        hist += fast_hist(net.blobs[gt].data[0, 0].flatten(),
                          net.blobs[layer].data[0].argmax(0).flatten(), n_cl)
        loss += net.blobs["loss"].data.flat[0]
    return hist, loss / len(dataset)


def scores(hist):
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        return {"overall_acc": np.diag(hist).sum() / hist.sum(),
                "mean_acc": np.nanmean(np.diag(hist) / hist.sum(1)),
                "mean_iu": np.nanmean(iu)}


def seg_tests(solver, dataset, layer="score", gt="label"):
    solver.test_nets[0].share_with(solver.net)
    hist, loss = compute_hist(solver.test_nets[0], dataset, layer, gt)
    return dict(scores(hist), loss=loss, hist=hist)


# --- the two flows ------------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    train, val = [f"tr{i}" for i in range(5)], [f"va{i}" for i in range(3)]
    make_tree(data, train, seed=0)
    make_tree(data, val, seed=1)
    write(data / "train.txt", "\n".join(train) + "\n")
    write(data / "seg11valid.txt", "\n".join(val) + "\n")
    write(tmp_path / "seg_layers.py", SEG_LAYERS)
    monkeypatch.setitem(sys.modules, "caffe", caffe)     # the layer module imports caffe
    monkeypatch.delitem(sys.modules, "seg_layers", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with open("train.prototxt", "w") as f:
        f.write(str(fcn("train", str(data))))
    with open("val.prototxt", "w") as f:
        f.write(str(fcn("seg11valid", str(data))))
    with open("base.prototxt", "w") as f:
        f.write(str(base_net()))
    write(tmp_path / "solver.prototxt", SOLVER)
    caffe.set_random_seed(5)
    caffe.Net("base.prototxt", caffe.TEST).save("base.caffemodel")
    return tmp_path, val


def solve_pycaffe(val, rounds, steps):
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver("solver.prototxt")
    solver.net.copy_from("base.caffemodel")
    interp_layers = [k for k in solver.net.params.keys() if "up" in k]
    interp(solver.net, interp_layers)
    record = {"interp_layers": interp_layers, "train_loss": [], "tests": []}
    for _ in range(rounds):
        solver.step(steps)
        record["train_loss"].append(float(solver.net.blobs["loss"].data))
        record["tests"].append(seg_tests(solver, val, layer="score"))
    record["iter"] = solver.iter
    record["fc6"] = solver.net.params["fc6"][0].data.copy()
    return record


def solve_fcnwild(val, rounds, steps):
    """The same run written against fcnwild's Net and Solver."""
    solver = create_solver("solver.prototxt", allow_python=True)
    solver.net.copy_from("base.caffemodel")
    interp(solver.net, ["upscore"])                 # fcnwild's params[...] are views too
    record = {"train_loss": [], "tests": []}
    test_net = solver.test_nets[0]
    for _ in range(rounds):
        solver.step(steps)
        record["train_loss"].append(float(solver.net.blobs["loss"].data))
        test_net.share_weights_from(solver.net)
        hist, loss = np.zeros((CLASSES, CLASSES)), 0
        for _ in val:
            test_net.forward()
            hist += fast_hist(test_net.blobs["label"].data[0, 0].flatten(),
                              test_net.blobs["score"].data[0].argmax(0).flatten(), CLASSES)
            loss += test_net.blobs["loss"].data.flat[0]
        record["tests"].append(dict(scores(hist), loss=loss / len(val), hist=hist))
    record["fc6"] = solver.net.params["fc6"][0].data.copy()
    return record


def test_fcn_style_workflow_matches_fcnwilds_own_net_and_solver(workdir):
    _, val = workdir
    ours = solve_pycaffe(val, rounds=3, steps=2)
    reference = solve_fcnwild(val, rounds=3, steps=2)
    assert ours["interp_layers"] == ["upscore"] and ours["iter"] == 6
    np.testing.assert_array_equal(ours["train_loss"], reference["train_loss"])
    for mine, theirs in zip(ours["tests"], reference["tests"]):
        np.testing.assert_array_equal(mine["hist"], theirs["hist"])
        assert mine["loss"] == theirs["loss"] and mine["mean_iu"] == theirs["mean_iu"]
    np.testing.assert_array_equal(ours["fc6"], reference["fc6"])
    # Every labelled val pixel was scored, and training moved the copied weights.
    labelled = sum(int((np.array(Image.open(f"data/labels/{v}.png")) != 255).sum())
                   for v in val)
    assert ours["tests"][-1]["hist"].sum() == labelled
    assert 0 <= ours["tests"][0]["mean_iu"] < ours["tests"][-1]["mean_iu"] <= 1
    assert ours["tests"][-1]["loss"] < ours["tests"][0]["loss"]      # it learns
    base = caffe.Net("base.prototxt", caffe.TEST, weights="base.caffemodel")
    assert not np.array_equal(ours["fc6"], base.params["fc6"][0].data)


def test_surgery_wrote_bilinear_kernels_through_the_views(workdir):
    solver = caffe.SGDSolver("solver.prototxt")
    interp(solver.net, ["upscore"])
    weight = solver._solver.net.layer_dict["upscore"].blobs[0].detach().numpy()
    for c in range(CLASSES):
        np.testing.assert_allclose(weight[c, c], upsample_filt(8), rtol=1e-6)
    assert not weight[0, 1].any()
