"""What category-specific adaptation needs besides the nets: the source's per-class size
statistics (the MIL loss's bounds) and the target images' image-level labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnwild.base import caffe_pb2
from fcnwild.base.atomic import atomic_write
from fcnwild.data.class_stats import (
    compute_class_stats,
    load_class_stats,
    save_class_stats,
)
from fcnwild.data.datasets import open_dataset
from fcnwild.nets.frontend import DataSpec
from fcnwild.tools.experiment.config import Experiment
from fcnwild.tools.experiment.scoring import TargetScorer


def open_data(data: DataSpec):
    """The dataset split a DataSpec names, with its reader options."""
    return open_dataset(data.source, data.split, **dict(o.split("=", 1) for o in data.options))


def write_class_stats(experiment: Experiment, path: Path) -> None:
    """alpha, delta, gamma of every class over the labelled source split."""
    stats = compute_class_stats(open_data(experiment.source), workers=2, progress=False)
    save_class_stats(stats, path)


def write_image_labels(experiment: Experiment, weights: Path, class_stats: Path,
                       path: Path) -> None:
    """The MIL layer's image-label rule (class c present when its predicted pixel fraction
    exceeds presence_ratio * alpha_c), applied once by ``weights`` to every target
    training image; written as an .npz of image names and a present matrix."""
    num_classes = experiment.arch.num_classes
    ratio = (experiment.mil or caffe_pb2.ConstrainedMILParameter()).presence_ratio
    alpha = load_class_stats(class_stats, num_classes).alpha
    predictor = TargetScorer(experiment).predictor(weights)
    dataset = open_data(experiment.target)
    present = np.zeros((len(dataset), num_classes), bool)
    for i in range(len(dataset)):
        prediction = predictor.predict(dataset.image(i))
        fraction = np.bincount(prediction.ravel(), minlength=num_classes)
        present[i] = fraction[:num_classes] / prediction.size > ratio * alpha
    with atomic_write(path, "wb") as f:
        np.savez(f, names=np.asarray(dataset.names()), present=present)
