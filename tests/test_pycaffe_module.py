"""fcnwild.caffe's process-wide functions: modes, devices, host copies, seeds, logging,
solver counts, NCCL, Timer, layer_type_list."""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest
import torch

import fcnwild.caffe as caffe
from fcnwild.caffe import _caffe
from fcnwild.layers import blob_views
from fcnwild.layers.registry import registered_types
from pycaffe_cases import IP_NET, ip_expected
from solver_cases import write


@pytest.fixture
def fresh_state(monkeypatch):
    """Each test starts from pycaffe's defaults and leaves the process as it found it."""
    monkeypatch.setattr(_caffe, "_state", dict(_caffe._state, gpu=False, device_id=0,
                                               warned=False, solver_count=1, solver_rank=0,
                                               multiprocess=False))
    return _caffe._state


def test_layer_type_list_is_exactly_the_registry():
    types = caffe.layer_type_list()
    assert types == registered_types() == sorted(types)
    assert {"Convolution", "Deconvolution", "Python", "SoftmaxWithLoss", "Crop"} <= set(types)


def test_module_constants():
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    assert caffe.__version__ == "1.0.0"
    assert caffe.has_nccl() is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines "
                                                      "without CUDA")
def test_set_mode_gpu_without_cuda_warns_once_and_stays_on_the_cpu(fresh_state, tmp_path):
    with pytest.warns(RuntimeWarning, match="no CUDA device"):
        caffe.set_mode_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caffe.set_mode_gpu()
        caffe.set_device(0)
    net = caffe.Net(str(write(tmp_path / "n.prototxt", IP_NET)), caffe.TEST)
    assert net._net.learnable_params[0].tensor.device.type == "cpu"
    assert _caffe.device() == torch.device("cpu")


def test_nets_follow_a_mode_or_device_change_at_their_next_call(fresh_state, tmp_path,
                                                                monkeypatch):
    net = caffe.Net(str(write(tmp_path / "n.prototxt", IP_NET)), caffe.TEST)
    moves = []
    monkeypatch.setattr(net._net, "to", moves.append)
    before = _caffe.generation()
    caffe.set_mode_cpu()
    caffe.set_device(0)
    net.forward()
    assert _caffe.generation() == before and moves == []      # nothing changed
    _caffe._set("device_id", 5)                 # what set_device(5) records on any machine
    net.forward()
    net.forward()
    assert moves == [_caffe.device()]           # moved once, to the device of the mode


def test_host_copies_reach_the_net_before_it_next_runs(fresh_state, tmp_path, monkeypatch):
    """The path CUDA blobs take (host copies, written back at the next call), run on the
    CPU by treating no device as viewable."""
    monkeypatch.setattr(blob_views, "_VIEWABLE", set())
    net = caffe.Net(str(write(tmp_path / "n.prototxt", IP_NET)), caffe.TEST)
    x = np.random.RandomState(0).randn(2, 3, 2, 2).astype(np.float32)
    data = net.blobs["data"].data
    assert data is net.blobs["data"].data              # one copy until the next flush
    data[...] = x
    net.params["ip"][1].data[...] = 0.5
    assert not net._net.blobs["data"].tensor.numpy().any()   # not written back yet
    net.forward()
    np.testing.assert_array_equal(net._net.blobs["data"].tensor.numpy(), x)
    np.testing.assert_allclose(net.blobs["ip"].data,
                               ip_expected(x, net.params["ip"][0].data, 0.5), rtol=1e-5)
    assert net.blobs["data"].data is not data           # a fresh copy after the run


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    path = str(write(tmp_path / "n.prototxt", IP_NET))
    caffe.set_random_seed(7)
    first = caffe.Net(path, caffe.TEST).params["ip"][0].data.copy()
    caffe.set_random_seed(7)
    again = caffe.Net(path, caffe.TEST).params["ip"][0].data
    caffe.set_random_seed(8)
    other = caffe.Net(path, caffe.TEST).params["ip"][0].data
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_timer(caplog):
    timer = caffe.Timer()
    with caplog.at_level(logging.WARNING, logger="fcnwild"):
        assert timer.ms == 0.0
    assert "never been run" in caplog.text
    timer.start()
    time.sleep(0.02)
    timer.stop()
    assert 15 <= timer.ms < 2000
    stopped = timer.ms
    time.sleep(0.01)
    assert timer.ms == stopped                          # a stopped timer keeps its reading
    timer.start()
    time.sleep(0.01)
    assert timer.ms >= 5                                # reading a running timer stops it


def test_init_log_and_log(capsys, fresh_state):
    logger = logging.getLogger("fcnwild")
    level = logger.level
    try:
        caffe.init_log(0, True)
        caffe.log("hello from a script")
        caffe.init_log(2)
        caffe.log("not shown")
        err = capsys.readouterr().err
        assert "hello from a script" in err and "not shown" not in err
        with pytest.raises(ValueError, match="glog level"):
            caffe.init_log(7)
    finally:
        caffe.init_log(std_err=False)
        logger.setLevel(level)


def test_solver_counts_round_trip(fresh_state):
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(4)
    caffe.set_solver_rank(2)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 2)
    assert fresh_state["multiprocess"] is True


def test_nccl_is_a_clear_error():
    with pytest.raises(NotImplementedError, match="has_nccl"):
        caffe.NCCL(None, "uid")
    with pytest.raises(NotImplementedError, match="NCCL"):
        caffe.NCCL.new_uid()
