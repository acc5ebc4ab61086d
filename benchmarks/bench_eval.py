"""Evaluation throughput: fcnwild vs the official Cityscapes evaluator (Python path), same files, same run.

Generates N ground-truth/prediction pairs of 1024x2048 label-id PNGs in the
Cityscapes layout (piecewise-constant maps like real label maps: a coarse
random grid upsampled, and predictions that disagree on random blocks), reads
every file once so both evaluators start from a warm page cache, then times

- cityscapesscripts' ``evaluateImgLists`` (instance-level scoring off, the
  Python path: CSUPPORT forced off, as in an install without its Cython
  extension), and
- ``fcnwild.data.score_predictions`` end to end (opening the dataset, matching
  the files, decoding and counting on a thread pool),
- decoding the same PNGs and nothing else, on the same threads (the floor),

checks that both give the same per-class IoU (1e-9), and prints the figures.

    python benchmarks/bench_eval.py [--pairs 500] [--workers N] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fcnwild.data.datasets import open_dataset
from fcnwild.data.labels import CITYSCAPES19
from fcnwild.data.score_predictions import score_predictions

HEIGHT, WIDTH = 1024, 2048
CITIES = ("frankfurt", "lindau", "munster")


def generate(root: Path, pairs: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    train_ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8)
    for i in range(pairs):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_{i:06d}_000019"
        gt_file = root / "gtFine/val" / city / f"{stem}_gtFine_labelIds.png"
        pred_file = root / "results" / f"{stem}_pred_labelIds.png"
        gts.append(gt_file)
        preds.append(pred_file)
        if gt_file.is_file() and pred_file.is_file():
            continue
        coarse = rng.integers(0, 34, (HEIGHT // 32, WIDTH // 32), dtype=np.uint8)
        gt = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)
        wrong = cv2.resize((rng.random((HEIGHT // 16, WIDTH // 16)) < 0.3).astype(np.uint8), (WIDTH, HEIGHT),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        pred = np.where(np.isin(gt, train_ids), gt, 7).astype(np.uint8)
        pred[wrong] = rng.choice(train_ids, size=int(wrong.sum()))
        for path, array in ((gt_file, gt), (pred_file, pred)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)  # Pillow, as cityscapesScripts writes its label PNGs
        image = root / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(image)  # never decoded by evaluation
    return gts, preds


def run_official(gts: list[Path], preds: list[Path]) -> tuple[float, dict]:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    official.CSUPPORT = False
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, False, True, False
    start = time.perf_counter()
    result = official.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)
    return time.perf_counter() - start, result


def time_decoding(paths: list[Path], workers: int) -> float:
    """Seconds to decode every PNG and nothing else, on ``workers`` threads: the floor under
    any evaluator that has to read these files."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for image in pool.map(lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED), paths):
            assert image is not None
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", help="keep (and reuse) the generated files here")
    args = parser.parse_args()

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fcnwild_bench_eval_"))
    try:
        start = time.perf_counter()
        gts, preds = generate(root, args.pairs)
        print(f"{args.pairs} pairs of {WIDTH}x{HEIGHT} label maps in {root} "
              f"({time.perf_counter() - start:.1f} s to generate or find)")
        for path in gts + preds:
            path.read_bytes()  # warm page cache for both contenders

        official_s, theirs = run_official(gts, preds)
        start = time.perf_counter()
        dataset = open_dataset(f"cityscapes:{root}", "val")
        ours = score_predictions(dataset, root / "results", workers=args.workers, progress=False)
        ours_s = time.perf_counter() - start
        decode_s = time_decoding(gts + preds, args.workers)

        worst = max(abs(ours.iou[k] - theirs["classScores"][n])
                    for k, n in enumerate(CITYSCAPES19.class_names) if not math.isnan(ours.iou[k]))
        assert worst <= 1e-9, f"per-class IoU differs from the official evaluator by {worst}"
        assert abs(ours.mean_iou["19"] - theirs["averageScoreClasses"]) <= 1e-9

        n = args.pairs
        print(f"cores: {os.cpu_count()}, load average before timing: {os.getloadavg()[0]:.2f}")
        print(f"official evaluator (Python path): {official_s:7.2f} s  {1000 * official_s / n:6.1f} ms/pair")
        print(f"fcnwild ({args.workers} threads):          {ours_s:7.2f} s  {1000 * ours_s / n:6.1f} ms/pair")
        print(f"PNG decoding alone ({args.workers} threads): {decode_s:7.2f} s  "
              f"{1000 * decode_s / n:6.1f} ms/pair -> at most {official_s / decode_s:.2f}x for any "
              f"evaluator reading these files with libpng")
        print(f"speed-up: {official_s / ours_s:.2f}x   mIoU {ours.mean_iou['19']:.6f} "
              f"(official {theirs['averageScoreClasses']:.6f}, max per-class difference {worst:.1e})")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
