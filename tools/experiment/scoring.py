"""Scoring an experiment's weights on its labelled target split with the deploy net."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from fcnwild.data.base import SegmentationDataset
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import EvaluationResult
from fcnwild.data.inference import TiledPredictor, evaluate_net
from fcnwild.nets.frontend import deploy_net
from fcnwild.nets.net import Net
from fcnwild.nets.tile_size import DEFAULT_MEMORY_BUDGET, budget_predictor
from fcnwild.tools.experiment.config import Experiment

log = logging.getLogger("fcnwild.adapt")


class TargetScorer:
    """Predicts and scores the labelled target split of ``experiment``; a front-end with a
    margin runs on the input ``budget`` bytes allow (or ``tile`` pixels square), predicting
    what its published 500 px tiles predict."""

    def __init__(self, experiment: Experiment, *, tile: int | None = None,
                 budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.experiment = experiment
        self.tile, self.budget = tile, budget
        spec, split = experiment.evaluation
        self.dataset: SegmentationDataset = open_dataset(spec, split)

    def predictor(self, weights: str | os.PathLike) -> TiledPredictor:
        """The deploy net with ``weights``: the published front-end tiled as above, a padded
        net on the whole (stride-aligned) image."""
        arch = self.experiment.arch
        height, width = self.dataset.image(0).shape[:2]
        if arch.margin:
            with torch.no_grad():
                net = Net(deploy_net(arch, "deploy", 500), weights=weights, phase="test")
            predictor, choice = budget_predictor(net, self.experiment.mean, arch.margin,
                                                 (height, width), budget=self.budget,
                                                 tile=self.tile)
            log.info("scoring with net input %dx%d, %d x %d tile(s) per image, about %.2f GiB",
                     *choice.input_size, *choice.tiles, choice.bytes / 2**30)
            return predictor
        net_param = deploy_net(arch, "deploy")
        shape = net_param.layer[0].input_param.shape[0]
        shape.dim[2] = _ceil_to(height, arch.stride)
        shape.dim[3] = _ceil_to(width, arch.stride)
        with torch.no_grad():
            net = Net(net_param, weights=weights, phase="test")
        return TiledPredictor(net, self.experiment.mean, margin=arch.margin)

    def evaluate(self, weights: str | os.PathLike) -> EvaluationResult:
        """Per-class IoU of ``weights`` on the whole labelled target split."""
        return evaluate_net(self.predictor(weights), self.dataset, progress=False)

    def predict(self, weights: str | os.PathLike, count: int
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(images, predicted train ids, ground truth) of the first ``count`` images."""
        predictor = self.predictor(weights)
        samples = [self.dataset[i] for i in range(min(count, len(self.dataset)))]
        return ([s.image for s in samples], [predictor.predict(s.image) for s in samples],
                [s.label for s in samples])


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
