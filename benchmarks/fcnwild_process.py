"""What the real-data benchmarks share: running an ``fcnwild`` command line as users do (its
own process, so that its wall time and peak RSS are its own), and random He-scaled weights
in place of a published caffemodel that cannot be downloaded here."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.layers.fillers import fill
from fcnwild.nets.net import Net

REPO = Path(__file__).resolve().parents[1]
MSRA = caffe_pb2.FillerParameter(type="msra")


@dataclass
class Finished:
    command: str          # as a user would type it
    seconds: float        # wall time of the whole process
    peak_rss_mb: float    # the process's own peak RSS (not its reader workers')
    log: str              # stdout and stderr, interleaved


def fcnwild(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Finished:
    """Run ``fcnwild ARGS`` in ``cwd``; raise with its log when it fails."""
    command = "fcnwild " + shlex.join(args)
    print(f"$ {command}", flush=True)
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "fcnwild.tools.cli", *args], cwd=cwd,
                                   env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if process.returncode:
        sys.exit(f"{command} failed (exit {process.returncode}):\n{text[-4000:]}")
    return Finished(command, seconds, usage.ru_maxrss / 1024, text)


def write_he_random(model: str | Path, output: Path, seed: int = 0,
                    input_rms: float = 1.0) -> int:
    """Write weights for ``model`` (a deploy prototxt) to ``output``: every weight blob drawn
    from Caffe's msra filler (N(0, 2 / fan_in)), every bias 0, the first layer's weights
    divided by ``input_rms``. He scaling keeps each layer's output at its input's scale,
    so with the input's RMS divided out every activation is O(1). Returns the parameter
    count."""
    torch.manual_seed(seed)
    with torch.no_grad():
        net = Net(model, phase="test")
        count = 0
        for k, blobs in enumerate(net.params.values()):
            weights = fill(MSRA, blobs[0].data.shape, NetError)
            blobs[0].data[...] = (weights / input_rms if k == 0 else weights).numpy()
            for blob in blobs[1:]:
                blob.data[...] = 0.0
            count += sum(blob.data.size for blob in blobs)
        net.save(output)
    return count
