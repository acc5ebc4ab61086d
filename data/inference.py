"""Whole-image prediction with a deploy net, tiled as fyu/dilation's ``test.py`` does it.

The image (BGR, mean subtracted) is padded by the net's margin with reflect-101
borders and cut into tiles of the net's input size whose output regions
(input minus twice the margin) cover the image edge to edge; a tile running
past the padded image is itself reflect-101 padded. The tiles' score maps are
stitched and, for deploy nets that stop at stride 8, upsampled with
``interp_map`` (fyu/dilation ``util.py``): pixel (h, w) reads the score map at
(h / zoom, w / zoom), top-left aligned, bilinearly. Then the argmax.

The net is anything with the pycaffe-like facade of ``fcnwild.nets.net.Net``:
``inputs``, ``outputs``, ``blobs[name].data``, ``reshape_inputs`` and
``forward(**inputs) -> {blob: array}``. Tiles of one image go through in
batches of ``batch_size``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from fcnwild.base.errors import NetError
from fcnwild.data.base import SegmentationDataset, SkippedSamples
from fcnwild.data.evaluation import ConfusionMatrix, EvaluationResult, PredictionWriter
from fcnwild.data.transforms import pad_reflect101

_ROWS_PER_CHUNK = 64


def interp_map(prob: np.ndarray, zoom: int, width: int, height: int) -> np.ndarray:
    """fyu/dilation's ``interp_map``, vectorised: same float64 arithmetic, float32 result.

    The original reads one row/column past the score map at the bottom/right
    edge (numba does no bounds check); here that neighbour is the edge itself.
    """
    channels, rows, cols = prob.shape
    w = np.arange(width)
    c0 = w // zoom
    ct = w / zoom - c0
    c1 = np.minimum(c0 + 1, cols - 1)
    out = np.empty((channels, height, width), dtype=np.float32)
    for start in range(0, height, _ROWS_PER_CHUNK):
        h = np.arange(start, min(start + _ROWS_PER_CHUNK, height))
        r0 = h // zoom
        rt = (h / zoom - r0)[None, :, None]
        r1 = np.minimum(r0 + 1, rows - 1)
        # rt * prob[r1] + (1 - rt) * prob[r0], then across columns, in the original's order.
        vertical = rt * prob[:, r1, :] + (1 - rt) * prob[:, r0, :]
        out[:, h, :] = (1 - ct) * vertical[:, :, c0] + ct * vertical[:, :, c1]
    return out


def covered_cells(size: int, region: int, zoom: int) -> int:
    """Score cells along one side of an image of ``size`` pixels that tiles of ``region``
    output pixels leave in the stitched map and the upsampling reads: up to one past the
    image's last cell where the tiles reach that far (beyond it the upsampling clamps)."""
    stitched = -(-size // region) * region // zoom
    return min(stitched, (size - 1) // zoom + 2)


class TiledPredictor:
    """Predicts train ids for whole images with a deploy net of fixed input size."""

    def __init__(self, net: Any, mean_bgr: Sequence[float], *, margin: int,
                 batch_size: int = 1, input_blob: str | None = None, output_blob: str | None = None,
                 same_as: tuple[int, int] | None = None, zoom: int | None = None) -> None:
        """``same_as`` (an output region, e.g. the deploy's own, with the net's ``zoom``):
        predict exactly as tiles of that region would, whatever this net's input size.
        The stitched score map then keeps the cells those tiles would have produced, up to
        the last one the upsampling reads, so a larger input only saves computation."""
        if same_as is not None and zoom is None:
            raise NetError("predicting as another tile size does needs the net's zoom (output stride)")
        self.same_as, self.zoom = same_as, zoom
        self.net = net
        self.mean = np.asarray(mean_bgr, dtype=np.float32)
        self.margin = margin
        self.batch_size = max(1, batch_size)
        self.input_blob = input_blob or net.inputs[0]
        self.output_blob = output_blob or ("prob" if "prob" in net.outputs else net.outputs[-1])
        if self.output_blob not in net.outputs:
            raise NetError(f"net has no output '{self.output_blob}'; outputs: {', '.join(net.outputs)}")
        shape = tuple(net.blobs[self.input_blob].data.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise NetError(f"input blob '{self.input_blob}' has shape {shape}; expected N x 3 x H x W")
        self.input_size = shape[2], shape[3]
        self.output_size = shape[2] - 2 * margin, shape[3] - 2 * margin
        if min(self.output_size) <= 0:
            raise NetError(f"input {shape[2]}x{shape[3]} is not larger than twice the margin {margin}")
        self._batch = shape[0]

    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        if tiles.shape[0] != self._batch:
            self.net.reshape_inputs({self.input_blob: tiles.shape})
            self._batch = tiles.shape[0]
        return np.asarray(self.net.forward(**{self.input_blob: tiles})[self.output_blob])

    def scores(self, image_rgb: np.ndarray) -> np.ndarray:
        """Class scores (C x H x W float32) for one RGB uint8 image."""
        height, width = image_rgb.shape[:2]
        (in_h, in_w), (out_h, out_w), m = self.input_size, self.output_size, self.margin
        image = image_rgb[:, :, ::-1].astype(np.float32) - self.mean
        image = pad_reflect101(image, m, m, m, m)
        keep = None
        if self.same_as is not None:
            keep = covered_cells(height, self.same_as[0], self.zoom), \
                covered_cells(width, self.same_as[1], self.zoom)
            height_covered, width_covered = keep[0] * self.zoom, keep[1] * self.zoom
        else:
            height_covered, width_covered = height, width
        tiles_h, tiles_w = -(-height_covered // out_h), -(-width_covered // out_w)
        tiles = []
        for h in range(tiles_h):
            for w in range(tiles_w):
                tile = image[h * out_h:h * out_h + in_h, w * out_w:w * out_w + in_w]
                tile = pad_reflect101(tile, 0, in_h - tile.shape[0], 0, in_w - tile.shape[1])
                tiles.append(tile.transpose(2, 0, 1))
        outputs = [self._forward(np.stack(tiles[i:i + self.batch_size]))
                   for i in range(0, len(tiles), self.batch_size)]
        maps = np.concatenate(outputs)
        zoom = out_h // maps.shape[2]
        if maps.shape[2] * zoom != out_h or maps.shape[3] * zoom != out_w:
            raise NetError(f"output '{self.output_blob}' is {maps.shape[2]}x{maps.shape[3]} for an output "
                           f"region of {out_h}x{out_w}; expected the region divided by an integer zoom")
        grid = maps.reshape(tiles_h, tiles_w, *maps.shape[1:])
        prob = np.concatenate([np.concatenate(list(row), axis=2) for row in grid], axis=1)
        if keep is not None:
            prob = prob[:, :keep[0], :keep[1]]
        if zoom > 1:
            return interp_map(prob, zoom, width, height)
        return prob[:, :height, :width]

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """Train ids (H x W uint8) for one RGB uint8 image."""
        return self.scores(image_rgb).argmax(axis=0).astype(np.uint8)


def evaluate_net(predictor: TiledPredictor, dataset: SegmentationDataset, *,
                 writer: PredictionWriter | None = None, progress: bool = True,
                 strict: bool = False) -> EvaluationResult | None:
    """Predict every image of a split; score it if labelled, save predictions if ``writer`` is given.

    A sample whose image or label cannot be used is left out and listed in the result
    (``skipped``), or, with ``strict``, stops the evaluation with its DatasetError."""
    if not dataset.labelled and writer is None:
        raise NetError(f"{dataset!r}: unlabelled, so there is nothing to score and nowhere to save")
    space = dataset.label_space
    confusion = ConfusionMatrix(space.num_classes)
    skipped = SkippedSamples(strict)
    for index in tqdm(range(len(dataset)), disable=not progress, desc="predicting", unit="image"):
        sample = skipped.read(lambda: dataset[index])
        if sample is None:
            continue
        scores = predictor.scores(sample.image)
        if scores.shape[0] != space.num_classes:
            raise NetError(f"output '{predictor.output_blob}' has {scores.shape[0]} channels but label "
                           f"space {space.name} has {space.num_classes} classes")
        pred = scores.argmax(axis=0).astype(np.uint8)
        if writer is not None:
            writer.write(sample.name, pred)
        if sample.label is not None:
            confusion.add(sample.label, pred)
    if not dataset.labelled:
        return None
    used = len(dataset) - len(skipped)
    return EvaluationResult(space, confusion, used, title=f"{dataset.family} {dataset.split}: {used} images",
                            skipped=tuple(skipped.messages()))
