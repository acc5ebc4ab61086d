"""Where the Caffe reference comparisons run: the CPU, unless FCNWILD_TEST_DEVICE names
another torch device (benchmarks/gpu_check.sh runs them on a lent GPU with
``FCNWILD_TEST_DEVICE=cuda``). TF32 stays off so the CPU tolerances hold there too.

Convolutions take conv_ops' fixed rules (FCNWILD_CONV_TUNING=off, inherited by the
commands tests start): no test times kernels or touches the user's plan cache, and
every test sees the same paths on every machine. tests/test_conv_tuning.py turns the
measurement on where it is the subject."""
from __future__ import annotations

import os

import pytest
import torch

TEST_DEVICE = os.environ.get("FCNWILD_TEST_DEVICE", "cpu")
os.environ["FCNWILD_CONV_TUNING"] = "off"

if TEST_DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def device() -> str:
    return TEST_DEVICE


@pytest.fixture(autouse=True)
def _working_directory(tmp_path, monkeypatch) -> None:
    """Each test runs in its own empty working directory, where Caffe (and so fcnwild)
    resolves relative snapshot prefixes and output files: nothing lands in the checkout."""
    monkeypatch.chdir(tmp_path)
