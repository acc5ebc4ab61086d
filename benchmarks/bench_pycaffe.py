"""What pycaffe's interface costs on top of fcnwild's Net.

1. ``forward()`` of the dilated front-end's deploy net (prototxt/frontend/deploy.prototxt)
   through ``fcnwild.caffe.Net`` (pycaffe: the input copied into the input blob, outputs
   returned as views) against ``fcnwild.nets.net.Net.forward`` on the same net object,
   runs interleaved; the machine is shared, so medians are compared. Claim: at most 2%.
   On a loaded machine the medians of seconds-long forwards scatter by more than 2%,
   so the interface's own cost is also measured alone: the same two calls on a net that
   only takes the same input and global-average-pools it (many runs, medians), and
   printed as a share of the front-end's median forward.
2. Reading ``net.blobs[name].data`` of a 500 MB blob (an input and a computed top): a
   view, no copy. Claim: under 1 ms.

    python benchmarks/bench_pycaffe.py [--repeat 5] [--size 500]

``--size`` feeds a smaller square input than the deploy file's 500 for a quicker run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fcnwild.caffe as caffe
from fcnwild.tools.allocator import retain_freed_memory

DEPLOY = Path(__file__).resolve().parent.parent / "prototxt" / "frontend" / "deploy.prototxt"
POOL_NET = """name: "pool"
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param {{ pool: AVE global_pooling: true }} }}
"""
BIG_NET = """name: "big"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 125 dim: 1000 dim: 1000 } } }
layer { name: "scaled" type: "Power" bottom: "data" top: "scaled" power_param { scale: 2 } }
"""


def interleaved_medians(runs: dict, repeat: int) -> dict[str, list[float]]:
    """Seconds of each run, alternating between them ``repeat`` times after a warm-up."""
    for run in runs.values():                      # allocations, pinned outputs
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def two_ways(net: caffe.Net, image: np.ndarray) -> dict:
    # The same fcnwild Net under both interfaces: same weights, same memory.
    plain = net._net
    return {"fcnwild.nets.net.Net": lambda: plain.forward(data=image),
            "fcnwild.caffe.Net": lambda: net.forward(data=image)}


def bench_forward(repeat: int, size: int) -> float:
    """The front-end's median forward seconds through fcnwild's own Net."""
    net = caffe.Net(str(DEPLOY), caffe.TEST)
    if size != net.blobs["data"].shape[2]:
        net.blobs["data"].reshape(1, 3, size, size)
        net.reshape()
    image = np.random.RandomState(0).uniform(-128, 128, net.blobs["data"].shape)
    seconds = interleaved_medians(two_ways(net, image.astype(np.float32)), repeat)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"  {name:22s} median {medians[name]:.3f} s  (runs: "
              f"{', '.join(f'{v:.3f}' for v in values)})")
    base = medians["fcnwild.nets.net.Net"]
    overhead = medians["fcnwild.caffe.Net"] / base - 1
    print(f"  pycaffe interface overhead: {overhead * 100:+.2f}% (claim: <= 2%)")
    return base


def bench_interface_alone(size: int, forward_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pool.prototxt"
        path.write_text(POOL_NET.format(size=size))
        net = caffe.Net(str(path), caffe.TEST)
    image = np.random.RandomState(1).uniform(-128, 128, (1, 3, size, size))
    seconds = interleaved_medians(two_ways(net, image.astype(np.float32)), 200)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    extra = medians["fcnwild.caffe.Net"] - medians["fcnwild.nets.net.Net"]
    print(f"  same calls on an input-and-pool net: fcnwild.nets.net.Net "
          f"{medians['fcnwild.nets.net.Net'] * 1e3:.3f} ms, fcnwild.caffe.Net "
          f"{medians['fcnwild.caffe.Net'] * 1e3:.3f} ms: the interface costs "
          f"{extra * 1e3:.3f} ms per forward = {extra / forward_seconds * 100:.3f}% of the "
          f"front-end's forward")


def bench_blob_read(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.prototxt"
        path.write_text(BIG_NET)
        net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].data[...] = 1.0
    net.forward()
    for name in ("data", "scaled"):
        blob = net.blobs[name]
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            array = blob.data
            times.append(time.perf_counter() - start)
        assert array.nbytes == 500_000_000 and array[0, 0, 0, 0] == (2.0 if name == "scaled"
                                                                     else 1.0)
        print(f"  blobs[{name!r}].data, {array.nbytes / 1e6:.0f} MB: median "
              f"{statistics.median(times) * 1e6:.1f} us, max {max(times) * 1e6:.1f} us "
              f"(claim: < 1 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    retain_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"forward of {DEPLOY.relative_to(DEPLOY.parents[2])} at {args.size}x{args.size}, "
          f"{args.repeat} interleaved runs each:")
    forward_seconds = bench_forward(args.repeat, args.size)
    bench_interface_alone(args.size, forward_seconds)
    print("reading a blob's data:")
    bench_blob_read(max(args.repeat, 20))


if __name__ == "__main__":
    main()
