"""The measured choice of convolution paths (layers/conv_tuning.py): what it picks, what it
never runs, how its per-machine cache behaves, and that every plan it can choose computes
torch's convolution."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fcnwild.layers import conv_ops, conv_tuning


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Measuring on, with a private cache root and no plans remembered from other tests."""
    monkeypatch.setenv("FCNWILD_CACHE", str(tmp_path))
    monkeypatch.setenv(conv_tuning.ENV, "auto")
    monkeypatch.setattr(conv_tuning, "_caches", {})
    monkeypatch.setattr(conv_tuning, "_remeasured", set())
    return tmp_path


def _sleeper(seconds: float, calls: list[str], name: str):
    def run() -> None:
        calls.append(name)
        time.sleep(seconds)
    return run


def test_the_fastest_candidate_wins_and_is_remembered(cache: Path) -> None:
    calls: list[str] = []
    times = {"native": 0.03, "gemm": 0.002, "winograd": 0.01}
    full = lambda path: _sleeper(times[path], calls, path)          # noqa: E731
    assert conv_tuning.choose("op A", ["native", "gemm", "winograd"], "native", full, None) == "gemm"
    files = list((cache / "conv_plans").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["machine"]["threads"] == torch.get_num_threads()
    assert stored["plans"]["op A"]["path"] == "gemm"
    assert set(stored["plans"]["op A"]["ms"]) == {"native", "gemm", "winograd"}

    # A new process reads the file and measures nothing.
    conv_tuning._caches.clear()
    conv_tuning._remeasured.clear()
    calls.clear()
    assert conv_tuning.choose("op A", ["native", "gemm", "winograd"], "native", full, None) == "gemm"
    assert calls == []


def test_a_candidate_hopeless_on_the_probe_never_runs_at_full_size(cache: Path) -> None:
    calls: list[str] = []
    probe_times = {"native": 0.002, "gemm": 0.05}
    probe = lambda path: _sleeper(probe_times[path], calls, "probe " + path)  # noqa: E731
    full = lambda path: _sleeper(0.001, calls, "full " + path)               # noqa: E731
    assert conv_tuning.choose("op B", ["native", "gemm"], "native", full, probe) == "native"
    assert "probe gemm" in calls and "full gemm" not in calls


def test_the_rule_is_kept_even_when_its_probe_is_slow(cache: Path) -> None:
    calls: list[str] = []
    probe_times = {"native": 0.05, "gemm": 0.002}
    probe = lambda path: _sleeper(probe_times[path], calls, "probe " + path)  # noqa: E731
    full_times = {"native": 0.001, "gemm": 0.02}
    full = lambda path: _sleeper(full_times[path], calls, "full " + path)    # noqa: E731
    assert conv_tuning.choose("op C", ["native", "gemm"], "native", full, probe) == "native"
    assert "full native" in calls


def test_a_candidate_that_fails_is_dropped(cache: Path) -> None:
    def full(path: str):
        def run() -> None:
            if path == "gemm":
                raise RuntimeError("not enough memory")
        return run
    assert conv_tuning.choose("op D", ["native", "gemm"], "gemm", full, None) == "native"


def test_off_mode_measures_and_writes_nothing(cache: Path, monkeypatch) -> None:
    monkeypatch.setenv(conv_tuning.ENV, "off")

    def full(path: str):
        raise AssertionError("nothing may be timed with tuning off")
    assert conv_tuning.choose("op E", ["native", "gemm"], "gemm", full, None) == "gemm"
    assert not (cache / "conv_plans").exists()


def test_recalibrate_measures_each_key_again_once(cache: Path) -> None:
    calls: list[str] = []
    full = lambda path: _sleeper(0.001, calls, path)                # noqa: E731
    conv_tuning.choose("op F", ["native", "gemm"], "native", full, None)
    conv_tuning._remeasured.clear()                                 # a new process
    calls.clear()
    with conv_tuning.override("recalibrate"):
        conv_tuning.choose("op F", ["native", "gemm"], "native", full, None)
        measured = len(calls)
        conv_tuning.choose("op F", ["native", "gemm"], "native", full, None)
    assert measured > 0 and len(calls) == measured


def test_a_corrupt_cache_is_measured_again_and_rewritten(cache: Path) -> None:
    path = conv_tuning.plan_cache().path
    conv_tuning._caches.clear()
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "plans": [truncated')
    full = lambda path: _sleeper(0.001, [], path)                   # noqa: E731
    with pytest.warns(UserWarning, match="corrupt"):
        assert conv_tuning.choose("op G", ["native", "gemm"], "native", full, None)
    assert json.loads(path.read_text())["plans"]["op G"]["path"] in ("native", "gemm")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_cache_keeps_the_plans_in_memory(cache: Path) -> None:
    (cache / "conv_plans").mkdir()
    (cache / "conv_plans").chmod(0o500)
    calls: list[str] = []
    full = lambda path: _sleeper(0.001, calls, path)                # noqa: E731
    with pytest.warns(UserWarning, match="cannot write"):
        first = conv_tuning.choose("op H", ["native", "gemm"], "native", full, None)
    calls.clear()
    assert conv_tuning.choose("op H", ["native", "gemm"], "native", full, None) == first
    assert calls == []


def test_an_unwritable_cache_root_does_not_fail_the_run(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FCNWILD_CACHE", str(blocker))
    monkeypatch.setenv(conv_tuning.ENV, "auto")
    monkeypatch.setattr(conv_tuning, "_caches", {})
    monkeypatch.setattr(conv_tuning, "_remeasured", set())
    full = lambda path: _sleeper(0.001, [], path)                   # noqa: E731
    with pytest.warns(UserWarning, match="cannot write"):
        assert conv_tuning.choose("op I", ["native", "gemm"], "native", full, None)


def test_a_bad_mode_is_reported(monkeypatch) -> None:
    monkeypatch.setenv(conv_tuning.ENV, "fastest")
    with pytest.raises(ValueError, match="FCNWILD_CONV_TUNING"):
        conv_tuning.mode()


# --- conv_ops with measuring on --------------------------------------------------------

CASES = [  # x shape, w shape, stride, pad, dilation, groups, transposed
    ((2, 64, 20, 18), (64, 64, 3, 3), (1, 1), (1, 0), (2, 1), 1, False),
    ((1, 24, 18, 18), (96, 24, 5, 5), (1, 1), (2, 2), (2, 2), 1, False),
    ((2, 20, 9, 9), (30, 20, 1, 1), (1, 1), (0, 0), (1, 1), 1, False),
    ((1, 6, 7, 7), (6, 1, 4, 4), (2, 2), (1, 1), (1, 1), 6, True),
    ((1, 32, 12, 12), (32, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels-last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'deconv' if c[-1] else 'conv'}")
def test_measured_plans_compute_torchs_convolution(cache: Path, case, memory_format) -> None:
    x_shape, w_shape, stride, pad, dilation, groups, transposed = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).contiguous(
        memory_format=memory_format).requires_grad_()
    w = (torch.randn(w_shape, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    c_out = w_shape[1] * groups if transposed else w_shape[0]
    b = torch.randn(c_out, generator=gen, dtype=torch.float64).requires_grad_()
    if transposed:
        y = conv_ops.deconvolution(x, w, b, stride, pad, dilation, groups)
        ref = F.conv_transpose2d(x, w, b, stride, pad, 0, groups, dilation)
    else:
        y = conv_ops.convolution(x, w, b, stride, pad, dilation, groups)
        ref = F.conv2d(x, w, b, stride, pad, dilation, groups)
    assert y.is_contiguous(memory_format=memory_format)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for ours, theirs in zip((y, *torch.autograd.grad(y, (x, w, b), gy)),
                            (ref, *torch.autograd.grad(ref, (x, w, b), gy))):
        assert (ours - theirs).abs().max() <= 1e-10 * theirs.abs().max()
    plan = conv_ops.choose_plan(x, w, stride, pad, dilation, groups, transposed)
    stored = json.loads(next((cache / "conv_plans").glob("*.json")).read_text())["plans"]
    assert len(stored) == 3 and all(p in conv_ops.PATHS for p in plan)


def test_a_choice_made_on_a_busy_machine_is_measured_again_when_it_is_quieter(
        cache: Path, monkeypatch) -> None:
    cpus = os.cpu_count() or 1
    load = [4.0 * cpus]
    monkeypatch.setattr(conv_tuning.os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    calls: list[str] = []
    full = lambda path: _sleeper(0.001, calls, path)                # noqa: E731
    conv_tuning.choose("op J", ["native", "gemm"], "native", full, None)
    conv_tuning._remeasured.clear()                                 # a new process, as busy
    calls.clear()
    conv_tuning.choose("op J", ["native", "gemm"], "native", full, None)
    assert calls == []
    conv_tuning._remeasured.clear()                                 # a new process, quiet
    load[0] = 0.5 * cpus
    conv_tuning.choose("op J", ["native", "gemm"], "native", full, None)
    assert calls
    stored = json.loads(next((cache / "conv_plans").glob("*.json")).read_text())
    assert stored["plans"]["op J"]["load"] == round(0.5 * cpus, 2)


def test_onednn_forward_is_no_candidate_for_a_kernel_beyond_the_buffer_budget() -> None:
    # fc6 of the full-width front-end: oneDNN's forward would copy its 411 MB kernel.
    fc6 = conv_ops.Geometry((7, 7), (1, 1), (0, 0), (4, 4), 1)
    x_shape, big, small = (1, 512, 54, 54), (4096, 512, 7, 7), (64, 512, 7, 7)
    assert "native" not in conv_ops._candidates("forward", fc6, x_shape, big, 4)
    assert "gemm" in conv_ops._candidates("forward", fc6, x_shape, big, 4)
    assert "native" in conv_ops._candidates("input_grad", fc6, x_shape, big, 4)
    assert "native" in conv_ops._candidates("forward", fc6, x_shape, small, 4)


def test_a_remembered_plan_makes_no_probe_tensors(cache: Path, monkeypatch) -> None:
    x = torch.randn(1, 16, 12, 12)
    w = torch.randn(16, 16, 3, 3)
    conv_ops.convolution(x, w, None, (1, 1), (1, 1), (1, 1), 1)        # measures once
    made = []
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: made.append(a) or real_randn(*a, **k))
    conv_ops.convolution(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    assert made == []


def test_pinned_paths_decide_without_timing_and_other_shapes_take_the_rules(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("a pinned choice was timed")
    monkeypatch.setattr(conv_tuning, "measure", no_timing)
    with conv_tuning.override("recalibrate"), conv_tuning.pinned({"op a": "gemm", "op b": "fft"}):
        assert conv_tuning.choose("op a", ["native", "gemm"], "native", None, None) == "gemm"
        # A pinned path that this operation cannot take, or no pin at all: the rule's path.
        assert conv_tuning.choose("op b", ["native", "gemm"], "native", None, None) == "native"
        assert conv_tuning.choose("op c", ["native", "winograd"], "winograd", None, None) == \
            "winograd"
    assert conv_tuning._pinned is None
