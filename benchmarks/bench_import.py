"""Import speed and memory of a VGG16-sized caffemodel (core issue: weights I/O).

Writes a caffemodel with the real VGG16 layer shapes (prototxt/vgg16, ~528 MB of
random float32), then times, each in its own process so each peak RSS is its own:

* ``cat FILE > /dev/null`` -- reading the bytes at all (page cache warm);
* ``Net.copy_from`` -- into the parameters of a VGG16 Net built beforehand, the
  way a Caffe model is imported into PyTorch (pycaffe's ``copy_from``);
* ``nets.weights.read_weights`` -- every blob into a new float32 numpy array
  (the kernel zeroes each fresh page first, so this costs more than a copy);
* baseline: ``NetParameter.ParseFromString`` on the whole file, then
  ``np.array(blob.data, dtype=np.float32)`` per blob, as a naive port does.

Prints seconds (best of ``--repeat``), the ratio to ``cat``, peak RSS and its
ratio to the file size; both readers' arrays are checked against the written sums.

    python benchmarks/bench_import.py [--repeat 3] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VGG16 = (Path(__file__).resolve().parents[1] / "prototxt" / "vgg16"
         / "VGG_ILSVRC_16_layers_deploy.prototxt")

# Each reader runs in a fresh interpreter; it prints seconds, peak RSS and a checksum.
_READERS = {
    "Net.copy_from": """
from fcnwild.nets.net import Net
net = Net(sys.argv[2], phase="test")        # parameters allocated before the clock starts
start = time.perf_counter()
net.copy_from(path)
arrays = [blob.data for params in net.params.values() for blob in params]
""",
    "read_weights": """
from fcnwild.nets.weights import read_weights
start = time.perf_counter()
arrays = [a for blobs in read_weights(path).values() for a in blobs]
""",
    "protobuf": """
from fcnwild.base import caffe_pb2
start = time.perf_counter()
with open(path, "rb") as f:
    net = caffe_pb2.NetParameter.FromString(f.read())
arrays = [np.array(b.data, dtype=np.float32) for layer in net.layer for b in layer.blobs]
""",
}
# VmHWM, not ru_maxrss: Linux carries a parent's high-water mark into ru_maxrss across
# fork and exec, and the parent holds the whole net it wrote.
_MEASURE = """
import json, re, sys, time
import numpy as np
path = sys.argv[1]
{reader}
seconds = time.perf_counter() - start
checksum = float(sum(np.float64(a.sum(dtype=np.float64)) for a in arrays))
status = open("/proc/self/status").read()
peak_kb = int(re.search(r"VmHWM:\\s*(\\d+) kB", status).group(1))
print(json.dumps({{"seconds": seconds, "checksum": checksum, "peak_rss": peak_kb * 1024}}))
"""


def write_vgg16_caffemodel(path: Path) -> float:
    """VGG16's layers and shapes with random values; returns the sum of all values."""
    from fcnwild.nets.net import Net
    net = Net(VGG16, phase="test")
    rng = np.random.default_rng(0)
    checksum = 0.0
    for params in net.params.values():
        for blob in params:
            values = rng.standard_normal(blob.data.shape, dtype=np.float32)
            blob.data[...] = values
            checksum += float(values.sum(dtype=np.float64))
    net.save(path)
    return checksum


def time_cat(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - start


def run_reader(name: str, path: Path) -> dict:
    code = _MEASURE.format(reader=_READERS[name])
    out = subprocess.run([sys.executable, "-c", code, str(path), str(VGG16)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="folder for the generated caffemodel (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "vgg16_random.caffemodel"
        checksum = write_vgg16_caffemodel(path)
        size = path.stat().st_size
        print(f"VGG16-shaped caffemodel: {size / 1e6:.1f} MB ({path})")
        cat = min(time_cat(path) for _ in range(args.repeat + 1))   # first run warms the cache
        print(f"{'cat > /dev/null':14s}: {cat:.3f} s")
        for name in _READERS:
            runs = [run_reader(name, path) for _ in range(args.repeat)]
            best = min(r["seconds"] for r in runs)
            rss = max(r["peak_rss"] for r in runs)
            if not np.isclose(runs[0]["checksum"], checksum, rtol=1e-6):
                raise SystemExit(f"{name} read wrong values: checksum {runs[0]['checksum']} "
                                 f"!= {checksum}")
            print(f"{name:14s}: {best:.3f} s = {best / cat:.2f}x cat; "
                  f"peak RSS {rss / 1e6:.0f} MB = {rss / size:.2f}x the file")


if __name__ == "__main__":
    main()
