"""Is the synthetic benchmark's default shift the right difficulty? Source-only vs target oracle.

Trains a tiny dilated front-end-style net (3x3 convs, two poolings, dilated
convs, 1x1 "fc" layers, bilinear upsampling) in plain torch on
``source_train`` and, the same way, on ``target_train_labelled`` (the oracle),
then prints target-val mIoU and per-class IoU. The benchmark is well posed when
source-only is well above chance but ~20 points or more under the oracle.

``--adapt`` also runs rough stand-ins of the paper's two stages, started from
the source-only net, to see that the shift leaves room for them: GA (a
pixel-level domain classifier on fc7, alternating with a representation step
that confuses it) and GA+CA (plus the constrained MIL loss on target images:
image-level labels predicted by the net the stage starts from, class-size
bounds from source labels, fcnwild's CCNN solver). They are not fcnwild's adaptation
nets (``fcnwild adapt`` is), just a check of the benchmark.

    python benchmarks/check_synthetic_shift.py [--iters 1000] [--seed 0] [--adapt]
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fcnwild.data.class_stats import image_class_fractions
from fcnwild.data.evaluation import ConfusionMatrix, nan_mean
from fcnwild.data.synthetic import BENCHMARK_TRAIN_IDS, ShiftConfig, open_synthetic
from fcnwild.data.labels import CITYSCAPES19, IGNORE
from fcnwild.layers.constraint_solver import predicted_present, size_constraints, solve_constrained_softmax

N_CLASSES = CITYSCAPES19.num_classes


def conv(cin: int, cout: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]


class TinyFrontEnd(nn.Module):
    """Output stride 4; conv5 and fc6 dilated instead of pooled further, like the dilated front-end."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv(3, 16), nn.MaxPool2d(2), *conv(16, 32), nn.MaxPool2d(2), *conv(32, 64),
            *conv(64, 64, 2), *conv(64, 128, 4),              # conv5, fc6
            nn.Conv2d(128, 128, 1), nn.ReLU(inplace=True))    # fc7
        self.score = nn.Conv2d(128, N_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fc7 features, class scores at output stride 4)."""
        fc7 = self.features(x)
        return fc7, self.score(fc7)


def upsample(scores: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(scores, size=like.shape[2:], mode="bilinear", align_corners=False)


def to_input(images: np.ndarray, device: str) -> torch.Tensor:
    return ((torch.from_numpy(images).permute(0, 3, 1, 2).float() - 128.0) / 64.0).to(device)


class Batches:
    """Random mirrored batches of one split, drawn from a seeded generator."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, batch: int, seed: int, device: str) -> None:
        self.x = to_input(images, device)
        self.y = None if labels is None else torch.from_numpy(labels).long().to(device)
        self.batch, self.rng = batch, np.random.default_rng(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        idx = torch.from_numpy(self.rng.choice(len(self.x), self.batch, replace=False)).to(self.x.device)
        x, y = self.x[idx], None if self.y is None else self.y[idx]
        if self.rng.random() < 0.5:
            x, y = x.flip(3), None if y is None else y.flip(2)
        return x, y, idx


def seg_loss(net: TinyFrontEnd, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(upsample(net(x)[1], x), y, ignore_index=IGNORE)


def train_supervised(data, iters: int, seed: int, device: str, batch: int = 8) -> TinyFrontEnd:
    torch.manual_seed(seed)
    net = TinyFrontEnd().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = Batches(data.images, data.labels, batch, seed, device)
    for _ in range(iters):
        x, y, _ = batches.next()
        loss = seg_loss(net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def domain_classifier(device: str) -> nn.Module:
    return nn.Sequential(nn.Conv2d(128, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 2, 1)).to(device)


def domain_loss(logits: torch.Tensor, domain: int) -> torch.Tensor:
    return F.cross_entropy(logits, torch.full((logits.shape[0],) + logits.shape[2:], domain,
                                              dtype=torch.long, device=logits.device))


def adapt(net: TinyFrontEnd, source, target, iters: int, seed: int, device: str,
          sizes: np.ndarray | None = None, batch: int = 8, ga_weight: float = 0.1,
          ca_weight: float = 1.0) -> TinyFrontEnd:
    """GA (and CA when source class ``sizes`` (alpha, delta, gamma) are given): alternate a
    domain-classifier step (min L_D) with a representation step (min L_seg + w * 1/2 (L_D + L_Dinv)
    [+ L_CA]). CA's image-level labels are predicted once, by the net the stage starts from: predicting
    them online from the net being trained lets a class that drops out of a prediction be zeroed
    out for good (cars collapsed that way)."""
    torch.manual_seed(seed)
    net = copy.deepcopy(net)
    disc = domain_classifier(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    if sizes is not None:
        alpha, delta, gamma = torch.as_tensor(sizes, dtype=torch.float32, device=device)
        present = predicted_present(scores_of(net, target.images, device), delta)
    src = Batches(source.images, source.labels, batch, seed, device)
    tgt = Batches(target.images, None, batch, seed + 1, device)
    for _ in range(iters):
        xs, ys, _ = src.next()
        xt, _, idx = tgt.next()
        fs, ss = net(xs)
        ft, st = net(xt)
        d_loss = domain_loss(disc(fs.detach()), 0) + domain_loss(disc(ft.detach()), 1)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        ds, dt = disc(fs), disc(ft)
        confusion = 0.25 * (domain_loss(ds, 0) + domain_loss(ds, 1) + domain_loss(dt, 0) + domain_loss(dt, 1))
        loss = F.cross_entropy(upsample(ss, xs), ys, ignore_index=IGNORE) + ga_weight * confusion
        if sizes is not None:
            constraints = size_constraints(present[idx], alpha, gamma, upper_slack=2.0)
            latent = solve_constrained_softmax(st.detach(), constraints).P
            loss = loss + ca_weight * -(latent * F.log_softmax(st, 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def source_class_sizes(labels: np.ndarray) -> np.ndarray:
    """(3, C): 10th percentile, mean and 90th percentile of each class's share of the source
    images that contain it (the definition of fcnwild.data.class_stats)."""
    fractions = np.stack([image_class_fractions(label, N_CLASSES) for label in labels])
    sizes = np.zeros((3, N_CLASSES))
    for c, f in enumerate(fractions.T):
        if (f > 0).any():
            sizes[:, c] = np.percentile(f[f > 0], 10), f[f > 0].mean(), np.percentile(f[f > 0], 90)
    return sizes


@torch.no_grad()
def scores_of(net: TinyFrontEnd, images: np.ndarray, device: str) -> torch.Tensor:
    net.eval()
    out = torch.cat([net(to_input(images[i:i + 100], device))[1] for i in range(0, len(images), 100)])
    net.train()
    return out


def evaluate(net: TinyFrontEnd, val, device: str) -> np.ndarray:
    x = to_input(val.images[:1], device)
    pred = torch.cat([upsample(s[None], x).argmax(1) for s in scores_of(net, val.images, device)])
    matrix = ConfusionMatrix(N_CLASSES)
    matrix.add(val.labels.reshape(-1, val.labels.shape[2]), pred.cpu().numpy().astype(np.uint8).reshape(-1, val.labels.shape[2]))
    return matrix.iou()


def save_grid(source, target, path: str, rows: int = 6, zoom: int = 3) -> None:
    """Rows of (source image, its labels | target image, its labels), labels in the Cityscapes palette."""
    colours = CITYSCAPES19.color_lut()
    gap = np.full((source.images.shape[1], 4, 3), 255, np.uint8)
    grid = np.concatenate([np.concatenate([source.images[i], colours[source.labels[i]], gap,
                                           target.images[i], colours[target.labels[i]]], 1)
                           for i in range(rows)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="iterations (batch 8) per supervised net")
    parser.add_argument("--adapt-iters", type=int, default=400, help="iterations per adaptation stage")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data-seed", type=int, default=0, help="benchmark seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--adapt", action="store_true", help="also run rough GA and GA+CA stand-ins")
    parser.add_argument("--grid", metavar="PNG", help="also save a grid of source and target samples here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ShiftConfig(seed=args.data_seed)
    start = time.perf_counter()
    source = open_synthetic("source_train", config)
    target = open_synthetic("target_train", config)
    oracle_data = open_synthetic("target_train_labelled", config)
    val = open_synthetic("target_val", config)
    print(f"benchmark ready in {time.perf_counter() - start:.1f}s ({config.height}x{config.width}; "
          f"{len(source)} source, {len(target)} target train, {len(val)} target val)", flush=True)
    if args.grid:
        save_grid(source, val, args.grid)

    results: dict[str, np.ndarray] = {}

    def report(name: str, net: TinyFrontEnd, started: float) -> None:
        results[name] = evaluate(net, val, args.device)
        print(f"{name:12s} {time.perf_counter() - started:5.0f}s  target-val mIoU "
              f"{100 * nan_mean(results[name]):.1f}", flush=True)

    started = time.perf_counter()
    source_net = train_supervised(source, args.iters, args.seed, args.device)
    report("source-only", source_net, started)
    if args.adapt:
        sizes = source_class_sizes(source.labels)
        started = time.perf_counter()
        ga_net = adapt(source_net, source, target, args.adapt_iters, args.seed, args.device)
        report("GA", ga_net, started)
        started = time.perf_counter()
        ca_net = adapt(ga_net, source, target, args.adapt_iters, args.seed, args.device,
                       sizes=sizes)
        report("GA+CA", ca_net, started)
    started = time.perf_counter()
    report("oracle", train_supervised(oracle_data, args.iters, args.seed, args.device), started)

    freq = np.bincount(val.labels.ravel(), minlength=256)[:N_CLASSES] / val.labels.size
    print(f"\n{'class':15s}{'val px%':>8s}" + "".join(f"{n:>12s}" for n in results))
    for c in BENCHMARK_TRAIN_IDS:
        print(f"{CITYSCAPES19.class_names[c]:15s}{100 * freq[c]:8.2f}"
              + "".join(f"{100 * r[c]:12.1f}" for r in results.values()))
    print(f"{'mIoU':15s}{'':8s}" + "".join(f"{100 * nan_mean(r):12.1f}" for r in results.values()))


if __name__ == "__main__":
    main()
