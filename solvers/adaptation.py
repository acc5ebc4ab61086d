"""The paper's schedule: source-only -> GA -> GA+CA, each stage initialised from the one
before, every stage scored on the labelled target split (plus, optionally, a
target-trained oracle as the upper bound).

Every stage writes its net and solver prototxt, snapshots, final weights,
training curves and metrics under ``<out>/<stage>/``, so a stage can be rerun
by hand with ``fcnwild train`` and an interrupted run resumes: finished stages
are kept, an unfinished one restarts from its newest snapshot.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fcnwild.base import caffe_pb2
from fcnwild.base.atomic import atomic_write
from fcnwild.data.class_stats import compute_class_stats, save_class_stats
from fcnwild.data.datasets import open_dataset
from fcnwild.data.evaluation import EvaluationResult
from fcnwild.data.inference import TiledPredictor, evaluate_net
from fcnwild.nets.frontend import (
    DataSpec,
    FrontEnd,
    SolverSettings,
    adaptation_net,
    deploy_net,
    solver_param,
    to_text,
    train_net,
)
from fcnwild.nets.net import Net
from fcnwild.solvers import create_solver
from fcnwild.solvers.snapshot import latest_snapshot

log = logging.getLogger("fcnwild.adapt")
STAGES = ("source_only", "ga", "ga_ca", "oracle")
STAGE_TITLES = {"source_only": "source only", "ga": "GA", "ga_ca": "GA+CA",
                "oracle": "oracle (target-trained)"}
# Curves recorded per iteration when the net has these tops.
CURVE_TOPS = ("loss", "accuracy", "dom_loss", "dom_loss_inv", "dom_accuracy", "mil_loss")


@dataclass
class Experiment:
    """One adaptation experiment: data, architecture and per-stage solver settings."""
    arch: FrontEnd
    source: DataSpec                      # labelled source (training)
    target: DataSpec                      # target images (training, labels never read)
    evaluation: tuple[str, str]           # (dataset spec, split) of the labelled target split
    settings: dict[str, SolverSettings]   # per stage
    oracle: DataSpec | None = None        # labelled target training data, oracle stage only
    initial_weights: str | None = None    # e.g. the VGG-16 surgery result, for source-only
    mean: tuple[float, float, float] = field(default=DataSpec.mean)
    # The paper sums the domain losses over all units; small nets trained from scratch
    # take their mean instead, so one learning rate suits both losses.
    domain_normalization: int = caffe_pb2.LossParameter.NONE
    mil: caffe_pb2.ConstrainedMILParameter | None = None
    # Where GA+CA's image-level labels come from: the MIL layer's rule applied online to the
    # net being trained ("online"), or once, by the net the stage starts from
    # ("stage_start"). Online, a class that drops out of one prediction is suppressed there
    # and never comes back (on the synthetic benchmark cars fell from 56 to 3 IoU).
    image_labels: str = "stage_start"


def stage_order(stages: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    return tuple(s for s in STAGES if s in stages)


class AdaptationRun:
    """Runs (or resumes) the stages of an experiment in ``out_dir``."""

    def __init__(self, experiment: Experiment, out_dir: str | os.PathLike,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.experiment = experiment
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.class_stats = self.out / "class_stats.json"

    # ---------------------------------------------------------------- stages
    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
        results = {}
        for stage in stage_order(stages):
            results[stage] = self.run_stage(stage)
        return results

    def run_stage(self, stage: str) -> dict:
        folder = self.out / stage
        metrics_path = folder / "metrics.json"
        if metrics_path.exists():
            log.info("%s: already done (%s)", STAGE_TITLES[stage], metrics_path)
            return json.loads(metrics_path.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        solver_path = self._write_prototxt(stage, folder)
        torch.manual_seed(self.experiment.settings[stage].random_seed)
        solver = create_solver(solver_path)
        snapshot = latest_snapshot(folder / "snapshots" / "stage")
        if snapshot is not None:
            log.info("%s: resuming from %s", STAGE_TITLES[stage], snapshot)
        else:
            init = self._initial_weights(stage)
            if init is not None:
                solver.net.copy_from(init)
        curves: dict[str, list[float]] = {name: [] for name in CURVE_TOPS
                                          if name in solver.net.blobs}
        solver.hooks.append(lambda s, loss: self._record(s, curves, stage))
        solver.solve(resume=snapshot)
        final = folder / "final.caffemodel"
        solver.net.save(final)
        _write_json(folder / "curves.json", curves)
        result = self.evaluate(final).to_dict()
        result.update(stage=stage, title=STAGE_TITLES[stage], iterations=solver.iter)
        _write_json(metrics_path, result)
        return result

    def _record(self, solver, curves: dict[str, list[float]], stage: str) -> None:
        for name, values in curves.items():
            values.append(float(solver.net.blobs[name].tensor.detach().sum()))
        if self.progress is not None:
            self.progress(stage, solver.iter, solver.param.max_iter)

    def _initial_weights(self, stage: str) -> Path | str | None:
        previous = {"ga": "source_only", "ga_ca": "ga"}.get(stage)
        if previous is None:
            return self.experiment.initial_weights
        weights = self.out / previous / "final.caffemodel"
        if not weights.exists():
            raise FileNotFoundError(f"stage {stage} starts from {weights}; run '{previous}' first")
        return weights

    def _write_prototxt(self, stage: str, folder: Path) -> Path:
        e = self.experiment
        if stage in ("source_only", "oracle"):
            data = e.source if stage == "source_only" else e.oracle
            if data is None:
                raise ValueError("the oracle stage needs labelled target training data")
            net = train_net(e.arch, stage, data)
            solver = solver_param("net.prototxt", "snapshots/stage", e.settings[stage])
        else:
            category = stage == "ga_ca"
            if category and not self.class_stats.exists():
                self._write_class_stats()
            labels = None
            if category and e.image_labels == "stage_start":
                labels = folder / "target_image_labels.npz"
                self._write_image_labels(self._initial_weights(stage), labels)
            net = adaptation_net(e.arch, stage, e.source, e.target, category=category,
                                 class_stats=str(self.class_stats.resolve()),
                                 domain_normalization=e.domain_normalization, mil=e.mil,
                                 image_labels=str(labels.resolve()) if labels else None)
            solver = solver_param("net.prototxt", "snapshots/stage", e.settings[stage],
                                  adversarial=e.arch, category=category)
        solver.snapshot_after_train = True
        _write_text(folder / "net.prototxt", to_text(net))
        _write_text(folder / "solver.prototxt", to_text(solver))
        return folder / "solver.prototxt"

    def _write_image_labels(self, weights: Path, path: Path) -> None:
        """The MIL layer's image-label rule (class c present when its predicted pixel
        fraction exceeds presence_ratio * alpha_c), applied once by ``weights`` to every
        target training image."""
        from fcnwild.data.class_stats import load_class_stats
        e = self.experiment
        ratio = (e.mil or caffe_pb2.ConstrainedMILParameter()).presence_ratio
        alpha = load_class_stats(self.class_stats, e.arch.num_classes).alpha
        predictor, _ = self._predictor(weights)
        dataset = open_dataset(e.target.source, e.target.split,
                               **dict(o.split("=", 1) for o in e.target.options))
        present = np.zeros((len(dataset), e.arch.num_classes), bool)
        for i in range(len(dataset)):
            prediction = predictor.predict(dataset.image(i))
            fraction = np.bincount(prediction.ravel(), minlength=e.arch.num_classes)
            present[i] = fraction[:e.arch.num_classes] / prediction.size > ratio * alpha
        with atomic_write(path, "wb") as f:
            np.savez(f, names=np.asarray(dataset.names()), present=present)

    def _write_class_stats(self) -> None:
        source = self.experiment.source
        dataset = open_dataset(source.source, source.split,
                               **dict(o.split("=", 1) for o in source.options))
        save_class_stats(compute_class_stats(dataset, workers=2, progress=False),
                         self.class_stats)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, weights: str | os.PathLike) -> EvaluationResult:
        """Score ``weights`` on the labelled target split with the deploy net."""
        predictor, dataset = self._predictor(weights)
        return evaluate_net(predictor, dataset, progress=False)

    def predict(self, weights: str | os.PathLike, count: int
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(images, predicted train ids, ground truth) of the first ``count`` labelled
        target images."""
        predictor, dataset = self._predictor(weights)
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
        return ([s.image for s in samples], [predictor.predict(s.image) for s in samples],
                [s.label for s in samples])

    def _predictor(self, weights: str | os.PathLike):
        e = self.experiment
        spec, split = e.evaluation
        dataset = open_dataset(spec, split)
        if e.arch.margin:           # the published front-end: 500 px tiles
            net_param = deploy_net(e.arch, "deploy", 500)
        else:                       # padded nets take the whole (stride-aligned) image
            height, width = dataset.image(0).shape[:2]
            net_param = deploy_net(e.arch, "deploy")
            shape = net_param.layer[0].input_param.shape[0]
            shape.dim[2] = _ceil_to(height, e.arch.stride)
            shape.dim[3] = _ceil_to(width, e.arch.stride)
        with torch.no_grad():
            net = Net(net_param, weights=weights, phase="test")
        return TiledPredictor(net, e.mean, margin=e.arch.margin), dataset


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _write_json(path: Path, data) -> None:
    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
    _write_text(path, json.dumps(data, indent=1, default=default))


def with_iterations(settings: SolverSettings, iterations: int) -> SolverSettings:
    return replace(settings, max_iter=iterations)


# ------------------------------------------------------------------------ experiments
def synthetic_experiment(seed: int = 0, scale: float = 1.0, *, height: int | None = None,
                         width: int | None = None, images: int | None = None) -> Experiment:
    """The embedded benchmark with the demo's small front-end; ``scale`` stretches the
    iteration counts (1.0 = the schedule the README's figures were made with); the sizes
    shrink the benchmark (tests)."""
    from fcnwild.nets.frontend import ARCHITECTURES
    options = "".join(f"&{name}={value}" for name, value in
                      (("height", height), ("width", width), ("images", images)) if value)
    spec = f"synthetic:default?seed={seed}{options}"
    common = dict(crop_size=0, workers=0, seed=seed, batch_size=8)   # whole images
    source = DataSpec(spec, "source_train", **common)
    target = DataSpec(spec, "target_train", unlabelled=True, **common)
    oracle = DataSpec(spec, "target_train_labelled", **common)
    supervised = SolverSettings(solver_type="Adam", base_lr=1e-3, momentum=0.9,
                                weight_decay=5e-4, lr_policy="fixed", display=0, snapshot=200,
                                random_seed=seed, extra={"momentum2": 0.999})
    # The adversarial game does not settle at a fixed rate: target mIoU swings by several
    # points between snapshots, so the adaptation stages decay their rate to zero (poly).
    adaptation = replace(supervised, base_lr=2e-4, lr_policy="poly", classifier_lr_mult=5.0,
                         domain_weight=0.1, mil_weight=0.05,
                         extra={**supervised.extra, "power": 0.9})
    iterations = {"source_only": 600, "oracle": 600, "ga": 300, "ga_ca": 300}
    settings = {stage: replace(adaptation if stage in ("ga", "ga_ca") else supervised,
                               max_iter=max(1, round(n * scale)))
                for stage, n in iterations.items()}
    mil = caffe_pb2.ConstrainedMILParameter(lower_slack=0.5, upper_slack=2.0)
    return Experiment(ARCHITECTURES["small"], source, target, (spec, "target_val"), settings,
                      oracle=oracle, domain_normalization=caffe_pb2.LossParameter.VALID,
                      mil=mil)
