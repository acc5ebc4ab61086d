"""``fcnwild eval`` at Cityscapes scale: the full-width front-end's deploy net (random
He-scaled weights; the scores do not matter here) on generated 2048x1024 Cityscapes val
images, as a user runs it (its own process). Prints the seconds per image (the process's
wall time over the images, net building and weight loading included), its peak RSS, the net
input the memory budget chose, and the computation per image (direct-convolution FLOPs of
every layer, ``nets.timing.layer_flops``) against the deploy's own 500 px tiling and the
whole image in one forward.

    python benchmarks/bench_eval_cityscapes.py [--images 1] [--memory-budget GIB] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import torch

from fcnwild.data.synthetic import ShiftConfig
from fcnwild.data.synthetic_layouts import CITYSCAPES_SIZE, write_real_layouts
from fcnwild.nets.net import Net
from fcnwild.nets.tile_size import DEFAULT_MEMORY_BUDGET
from fcnwild.nets.timing import layer_flops
from fcnwild_process import REPO, fcnwild, write_he_random

DEPLOY = REPO / "prototxt" / "frontend" / "deploy.prototxt"
MARGIN = 186
CHOICE = re.compile(r"net input (\d+)x(\d+): (\d+) x (\d+) tile\(s\) per image")


def flops_per_image(net: Net, input_size: tuple[int, int], tiles: int) -> tuple[int, dict]:
    """Forward FLOPs of ``tiles`` forwards at ``input_size``, in all and per layer."""
    net.reshape_inputs({"data": (1, 3, *input_size)})
    per_layer = {net.layer_names[i]: layer_flops(net, i) * tiles for i in range(len(net.layers))}
    return sum(per_layer.values()), per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1, help="val images to score")
    parser.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                        metavar="GIB", help="passed to fcnwild eval (default its default)")
    parser.add_argument("--out", help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fcnwild_eval_"))
    _, cityscapes = write_real_layouts(
        out / "data", ShiftConfig(n_source_train=0, n_target_train=0, n_target_val=args.images),
        target_size=CITYSCAPES_SIZE)
    weights = out / "frontend_random.caffemodel"
    write_he_random(DEPLOY, weights)
    gpu = torch.cuda.is_available()
    run = fcnwild(["eval", "--model", str(DEPLOY), "--weights", str(weights), "--dataset",
                   f"cityscapes:{cityscapes}", "--split", "val", "--memory-budget",
                   f"{args.memory_budget:g}", "--json", "eval.json", "--no-progress",
                   *(["--device", "cuda"] if gpu else [])], out)
    scored = json.loads((out / "eval.json").read_text())
    if scored["num_images"] != args.images:
        raise SystemExit(f"scored {scored['num_images']} images, expected {args.images}")
    match = CHOICE.search(run.log)
    if match is None:
        raise SystemExit(f"no tile choice in the log:\n{run.log}")
    chosen, tiles = (int(match[1]), int(match[2])), int(match[3]) * int(match[4])

    with torch.device("meta"):          # shapes only
        net = Net(DEPLOY, phase="test")
    native_input = tuple(net.blobs["data"].shape[2:])
    # The deploy's own tiling: output regions of input - 2 margin over the whole image.
    native_tiles = math.prod(-(-side // (size - 2 * MARGIN))
                             for side, size in zip(CITYSCAPES_SIZE, native_input))
    whole_input = (CITYSCAPES_SIZE[0] + 2 * MARGIN, CITYSCAPES_SIZE[1] + 2 * MARGIN)
    native_flops, native_layers = flops_per_image(net, native_input, native_tiles)
    chosen_flops, _ = flops_per_image(net, chosen, tiles)
    whole_flops, whole_layers = flops_per_image(net, whole_input, 1)
    # Layers that cost the 500 px tiles what they cost the whole image: their output cells
    # are computed once each either way, so no tiling saves anything on them.
    unsaved = [name for name, flops in whole_layers.items()
               if flops and abs(native_layers[name] - flops) <= 0.01 * flops]

    device = torch.cuda.get_device_name(0) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; {args.images} val image(s) {CITYSCAPES_SIZE[1]}x"
          f"{CITYSCAPES_SIZE[0]}; memory budget {args.memory_budget:g} GiB")
    print(f"fcnwild eval: {run.seconds / args.images:.1f} s per image ({run.seconds:.1f} s in "
          f"all, net building and weight loading included), peak RSS {run.peak_rss_mb:.0f} MB")
    print(f"net input chosen: {chosen[0]}x{chosen[1]}, {tiles} forward(s) per image")
    print("forward computation per image (direct-convolution FLOPs):")
    for title, flops, size, count in (
            (f"deploy's own {native_input[0]} px tiles", native_flops, native_input, native_tiles),
            ("chosen input", chosen_flops, chosen, tiles),
            ("whole image in one forward", whole_flops, whole_input, 1)):
        print(f"  {title:>28}: {flops / 1e12:6.2f} TFLOP  ({count} x {size[0]}x{size[1]}; "
              f"{native_flops / flops:.2f}x less than 500 px tiles)")
    print(f"  {'of which no tiling saves':>28}: "
          f"{sum(whole_layers[n] for n in unsaved) / 1e12:6.2f} TFLOP  ({', '.join(unsaved)}: "
          "as costly in 500 px tiles as in the whole image)")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
