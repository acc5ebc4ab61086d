"""Batches for the Net's input blobs, from a dataset and a transform, on DataLoader workers.

Like Caffe's data layers, the stream never ends: it walks the dataset in a
fresh shuffled order each epoch and a batch may straddle two epochs. Every
random draw of sample i in epoch e comes from a generator seeded with
(seed, e, i), so batches are identical whatever the number of workers.

A sample whose image or label cannot be used (unreadable, truncated, ids
outside the label space) is replaced by the next usable one in dataset order,
logged once and listed in ``BlobFeeder.skipped``; with ``strict`` it raises. The
replacement depends only on which files are bad, so a resumed run still reads
what an uninterrupted one would.
"""
from __future__ import annotations

import logging
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.utils.data

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import SegmentationDataset
from fcnwild.data.transforms import CaffeTransform

log = logging.getLogger("fcnwild.data")
_SKIPPED = "_skipped"     # per-sample key: the files replaced on the way to this sample


class EpochSampler(torch.utils.data.Sampler):
    """Endless (epoch, index) pairs: each epoch a permutation seeded by (seed, epoch), or in order.

    ``start`` skips that many pairs of the stream (resuming where a run stopped);
    ``shard=(rank, count)`` keeps batch ``b`` of the stream only when
    ``b % count == rank`` (data-parallel ranks together read what one process would).
    """

    def __init__(self, size: int, seed: int, shuffle: bool, *, start: int = 0,
                 batch_size: int = 1, shard: tuple[int, int] = (0, 1)) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.start, self.batch_size = start, batch_size
        self.rank, self.count = shard

    def _stream(self) -> Iterator[tuple[int, int]]:
        epoch = self.start // self.size
        skip = self.start % self.size
        while True:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.size)
                     if self.shuffle else np.arange(self.size))
            for index in order[skip:]:
                yield epoch, int(index)
            skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, item in enumerate(self._stream(), start=self.start):
            if (position // self.batch_size) % self.count == self.rank:
                yield item


class TransformedDataset(torch.utils.data.Dataset):
    """Maps (epoch, index) to {blob name: array}, drawing randomness from (seed, epoch, index)."""

    def __init__(self, dataset: SegmentationDataset, transform: CaffeTransform, seed: int,
                 data_blob: str, label_blob: str | None, strict: bool = False,
                 image_labels: np.ndarray | None = None) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.data_blob, self.label_blob = data_blob, label_blob
        self.strict = strict
        self.image_labels = image_labels     # (images, classes): an "image_labels" blob

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The blobs of sample ``index`` (or of the next usable one), and under
        ``_SKIPPED`` the messages of the samples passed over to reach it."""
        epoch, index = key
        skipped: list[str] = []
        for offset in range(len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            try:
                blobs = self._read(epoch, candidate)
            except DatasetError as err:
                if self.strict:
                    raise
                skipped.append(str(err))
                continue
            blobs[_SKIPPED] = skipped
            return blobs
        raise DatasetError(f"{self.dataset!r}: no usable sample; {len(skipped)} failed, "
                           f"e.g. {skipped[0]}")

    def _read(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, index])
        label = self.dataset.label(index) if self.label_blob is not None else None
        data, label = self.transform(self.dataset.image(index), label, rng)
        blobs = {self.data_blob: data}
        if self.label_blob is not None:
            blobs[self.label_blob] = label
        if self.image_labels is not None:
            blobs["image_labels"] = self.image_labels[index].astype(np.float32)
        return blobs


def _collate(samples: list[dict]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A batch of blobs, and the messages of every sample skipped on the way to it."""
    skipped = [message for sample in samples for message in sample.pop(_SKIPPED)]
    return torch.utils.data.default_collate(samples), skipped


def _worker_init(_: int) -> None:
    # Each worker is one process on one core; OpenCV's own thread pool would oversubscribe them.
    cv2.setNumThreads(1)


class BlobFeeder:
    """Endless batches as ``{blob name: float32 array}``, ready for ``net.forward(**batch)``.

    ``label_blob=None`` feeds images only (unlabelled adaptation targets). ``skipped``
    lists the samples passed over so far, once each (see the module docstring);
    ``strict`` raises at the first instead.
    """

    def __init__(self, dataset: SegmentationDataset, transform: CaffeTransform, batch_size: int, *,
                 data_blob: str = "data", label_blob: str | None = "label", workers: int = 2,
                 seed: int = 0, shuffle: bool = True, prefetch: int = 2, start: int = 0,
                 shard: tuple[int, int] = (0, 1), strict: bool = False,
                 image_labels: np.ndarray | None = None) -> None:
        if label_blob is not None and not dataset.labelled:
            raise DatasetError(f"{dataset!r} has unlabelled images; pass label_blob=None to feed images only")
        self.loader = torch.utils.data.DataLoader(
            TransformedDataset(dataset, transform, seed, data_blob, label_blob, strict,
                               image_labels),
            batch_size=batch_size,
            collate_fn=_collate,
            sampler=EpochSampler(len(dataset), seed, shuffle, start=start,
                                 batch_size=batch_size, shard=shard),
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=prefetch if workers else None,
            # Forked workers inherit the locks of OpenMP/OpenCV thread pools a training process
            # has running and can hang on them; spawned ones start clean.
            multiprocessing_context="spawn" if workers else None,
        )
        self._batches: Iterator[tuple[dict[str, torch.Tensor], list[str]]] | None = None
        self.skipped: list[str] = []

    def __iter__(self) -> BlobFeeder:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._batches is None:
            self._batches = iter(self.loader)
        batch, skipped = next(self._batches)
        for message in skipped:
            if message not in self.skipped:     # a bad file comes back every epoch
                log.warning("Skipped a sample: %s", message)
                self.skipped.append(message)
        return {name: tensor.numpy() for name, tensor in batch.items()}

    def close(self) -> None:
        """Stop the worker processes (dropping the endless iterator shuts them down)."""
        self._batches = None
