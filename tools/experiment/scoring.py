"""Scoring an experiment's weights on its labelled target split with the deploy net."""
from __future__ import annotations

import os

import numpy as np
import torch

from fcnwild.data.base import SegmentationDataset
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import EvaluationResult
from fcnwild.data.inference import TiledPredictor, evaluate_net
from fcnwild.nets.frontend import deploy_net
from fcnwild.nets.net import Net
from fcnwild.tools.experiment.config import Experiment


class TargetScorer:
    """Predicts and scores the labelled target split of ``experiment``."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        spec, split = experiment.evaluation
        self.dataset: SegmentationDataset = open_dataset(spec, split)

    def predictor(self, weights: str | os.PathLike) -> TiledPredictor:
        """The deploy net with ``weights``: the published front-end in 500 px tiles, a
        padded net on the whole (stride-aligned) image."""
        arch = self.experiment.arch
        if arch.margin:
            net_param = deploy_net(arch, "deploy", 500)
        else:
            height, width = self.dataset.image(0).shape[:2]
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
