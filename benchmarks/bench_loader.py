"""Does data loading keep up with a CPU training step of the front-end at crop 500?

Generates Cityscapes-sized training pairs (2048x1024 RGB PNGs with photo-like
smooth content and noise, label-id PNGs), then measures

- the loader alone: seconds to produce one batch (crop 500, mirror, random
  scale, stride-8 labels) with no workers, i.e. one core's cost per batch;
- one training step (forward + backward + SGD update) of the dilated VGG16
  front-end at 500x500 in plain torch (3x3 convs without padding, pool4/pool5
  removed, conv5 dilation 2, fc6 7x7 dilation 4; the fcnwild Net runs the same
  torch ops, so this is a lower bound on its step time);
- the time the training loop waits in ``next(feeder)`` per step when the
  loader runs on its worker processes beside the training.

    python benchmarks/bench_loader.py [--batch 1] [--steps 2] [--workers 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from fcnwild.data.datasets import open_dataset
from fcnwild.data.loader import BlobFeeder
from fcnwild.data.transforms import CaffeTransform
from fcnwild.nets.frontend import ARCHITECTURES


def generate(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        stem = f"aachen_{i:06d}_000019"
        smooth = cv2.resize(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8), (2048, 1024),
                            interpolation=cv2.INTER_CUBIC)
        noisy = np.clip(smooth.astype(np.int16) + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)
        labels = cv2.resize(rng.integers(0, 34, (32, 64), dtype=np.uint8), (2048, 1024),
                            interpolation=cv2.INTER_NEAREST)
        for path, array in ((root / "leftImg8bit/train/aachen" / f"{stem}_leftImg8bit.png", noisy),
                            (root / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png", labels)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, compress_level=1)


def front_end(classes: int = 19) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for block, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, dilation=2 if block == 4 else 1), nn.ReLU(inplace=True)]
            channels = width
        if block < 3:
            layers.append(nn.MaxPool2d(2, 2))
    layers += [nn.Conv2d(512, 4096, 7, dilation=4), nn.ReLU(inplace=True), nn.Dropout(0.5),
               nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Conv2d(4096, classes, 1)]
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the training step")
    parser.add_argument("--images", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="fcnwild_bench_loader_"))
    try:
        generate(root, args.images)
        dataset = open_dataset(f"cityscapes:{root}", "train")
        transform = CaffeTransform(crop_size=500, margin=ARCHITECTURES["frontend"].margin,
                                   label_stride=ARCHITECTURES["frontend"].stride, mirror=True,
                                   scale=(0.75, 1.25))

        serial = BlobFeeder(dataset, transform, args.batch, workers=0, seed=1)
        next(serial)
        start = time.perf_counter()
        for _ in range(args.steps):
            batch = next(serial)
        load_s = (time.perf_counter() - start) / args.steps
        print(f"batch: data {batch['data'].shape}, label {batch['label'].shape}")
        print(f"loader alone (one process): {1000 * load_s:8.1f} ms per batch of {args.batch}")

        net = front_end()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-10, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss(ignore_index=255)
        feeder = BlobFeeder(dataset, transform, args.batch, workers=args.workers, seed=1)
        waits, steps = [], []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            batch = next(feeder)
            waited = time.perf_counter() - start
            start = time.perf_counter()
            scores = net(torch.from_numpy(batch["data"]))
            loss = loss_fn(scores, torch.from_numpy(batch["label"][:, 0]).long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step pays for worker start-up and allocator warm-up
                waits.append(waited)
                steps.append(time.perf_counter() - start)
        feeder.close()
        print(f"training step (torch front-end, {args.threads} threads): "
              f"{1000 * np.mean(steps):8.1f} ms per batch")
        print(f"waiting for the loader ({args.workers} workers) per step: {1000 * np.mean(waits):8.1f} ms")
        print(f"loader time per batch < step time: {load_s < np.mean(steps)} "
              f"(ratio {np.mean(steps) / load_s:.1f}x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
