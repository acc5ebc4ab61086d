"""What the constrained MIL loss costs inside a GA+CA representation step (method issue).

Builds the full-width GA+CA net of the paper's configurations (VGG-16 front-end,
19 classes, domain classifier on fc7, ConstrainedMILLoss on the target half;
nets/frontend.py ``adaptation_net``) at crop 500, one source and one target image
per step, fed by SegmentationData from the embedded synthetic benchmark (its
scenes padded by the front-end's 186 px margin and cropped to 500, as real data
would be). ``fcnwild time``'s measurement (nets/timing.py) then gives every
layer's forward and backward time; the MIL layer's share of the whole
forward-backward is printed with the table.

    python benchmarks/bench_mil.py [--iterations 2] [--crop 500]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from fcnwild.data.class_stats import compute_class_stats, save_class_stats
from fcnwild.data.datasets import open_dataset
from fcnwild.nets.frontend import ARCHITECTURES, DataSpec, adaptation_net
from fcnwild.nets.net import Net
from fcnwild.nets.timing import time_net
from fcnwild.tools.allocator import retain_freed_memory

# Big enough scenes that a 500 crop of the padded image is mostly scene.
SYNTHETIC = "synthetic:default?seed=0&height=384&width=768&images=4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()                       # as the fcnwild command does
    with tempfile.TemporaryDirectory() as folder:
        stats = Path(folder) / "class_stats.json"
        save_class_stats(compute_class_stats(open_dataset(SYNTHETIC, "source_train"),
                                             progress=False), stats)
        common = dict(crop_size=args.crop, batch_size=1, workers=0)
        net_param = adaptation_net(ARCHITECTURES["frontend"], "ga_ca_timing",
                                   DataSpec(SYNTHETIC, "source_train", **common),
                                   DataSpec(SYNTHETIC, "target_train", **common),
                                   category=True, class_stats=str(stats))
        net = Net(net_param, phase="train")
        report = time_net(net, args.iterations)
    print(report.format())
    step = report.forward_ms + report.backward_ms
    mil = [t for t in report.layers if t.type == "ConstrainedMILLoss"]
    if not mil:
        raise SystemExit("the GA+CA net has no ConstrainedMILLoss layer")
    cost = sum(t.forward_ms + t.backward_ms for t in mil)
    print(f"\nConstrainedMILLoss: {cost:.1f} ms of a {step:.0f} ms forward-backward "
          f"= {100 * cost / step:.2f}% (crop {args.crop}, 1 source + 1 target image)")


if __name__ == "__main__":
    main()
