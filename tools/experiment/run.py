"""Running an experiment's stages: source-only -> GA -> GA+CA, each initialised from the one
before, every stage scored on the labelled target split (plus, optionally, a target-trained
oracle as the upper bound).

Every stage writes its net and solver prototxt, snapshots, final weights, training
curves and metrics under ``<out>/<stage>/``, so a stage can be rerun by hand with
``fcnwild train`` and an interrupted run resumes: finished stages are kept, an
unfinished one restarts from its newest snapshot.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fcnwild.base.atomic import atomic_write
from fcnwild.base.errors import UsageError
from fcnwild.nets.prototxt import write_text
from fcnwild.solvers import create_solver
from fcnwild.solvers.snapshot import latest_snapshot
from fcnwild.tools.experiment.class_sizes import write_class_stats, write_image_labels
from fcnwild.tools.experiment.config import (
    PREVIOUS_STAGE,
    STAGE_TITLES,
    STAGES,
    Experiment,
    stage_order,
)
from fcnwild.tools.experiment.scoring import TargetScorer

log = logging.getLogger("fcnwild.adapt")
# Curves recorded per iteration when the net has these tops.
CURVE_TOPS = ("loss", "accuracy", "dom_loss", "dom_loss_inv", "dom_accuracy", "mil_loss")


class AdaptationRun:
    """Runs (or resumes) the stages of an experiment in ``out_dir``."""

    def __init__(self, experiment: Experiment, out_dir: str | os.PathLike,
                 progress: Callable[[str, int, int], None] | None = None,
                 precision: str = "fp32", scorer: TargetScorer | None = None) -> None:
        self.experiment = experiment
        self.precision = precision
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.class_stats = self.out / "class_stats.json"
        self.scorer = scorer or TargetScorer(experiment)

    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
        return {stage: self.run_stage(stage) for stage in stage_order(stages)}

    def run_stage(self, stage: str) -> dict:
        folder = self.out / stage
        metrics_path = folder / "metrics.json"
        if metrics_path.exists():
            log.info("%s: already done (%s)", STAGE_TITLES[stage], metrics_path)
            return json.loads(metrics_path.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        settings = self.experiment.settings[stage]
        log.info("%s: building the nets (%d iterations, iter_size %d) in %s", STAGE_TITLES[stage],
                 settings.max_iter, settings.iter_size, folder)
        solver_path = self._write_prototxt(stage, folder)
        torch.manual_seed(self.experiment.settings[stage].random_seed)
        solver = create_solver(solver_path, precision=self.precision)
        snapshot = latest_snapshot(folder / "snapshots" / "stage")
        if snapshot is not None:
            log.info("%s: resuming from %s", STAGE_TITLES[stage], snapshot)
        else:
            init = self.initial_weights(stage)
            if init is not None:
                solver.net.copy_from(init)
        curves: dict[str, list[float]] = {name: [] for name in CURVE_TOPS
                                          if name in solver.net.blobs}
        solver.hooks.append(lambda s, loss: self._record(s, curves, stage))
        if self.progress is not None:
            self.progress(stage, solver.iter, solver.param.max_iter)
        log.info("%s: iteration %d begins (%d forward/backward pass(es) before the first update)",
                 STAGE_TITLES[stage], solver.iter, solver.param.iter_size)
        solver.solve(resume=snapshot)
        final = self.final_weights(stage)
        solver.net.save(final)
        _write_json(folder / "curves.json", curves)
        result = self.scorer.evaluate(final).to_dict()
        result.update(stage=stage, title=STAGE_TITLES[stage], iterations=solver.iter)
        _write_json(metrics_path, result)
        return result

    def final_weights(self, stage: str) -> Path:
        return self.out / stage / "final.caffemodel"

    def initial_weights(self, stage: str) -> Path | str | None:
        previous = PREVIOUS_STAGE.get(stage)
        if previous is None:
            return self.experiment.initial_weights
        weights = self.final_weights(previous)
        if not weights.exists():
            raise UsageError(f"stage {stage} starts from {weights}; run '{previous}' first")
        return weights

    def _record(self, solver, curves: dict[str, list[float]], stage: str) -> None:
        for name, values in curves.items():
            values.append(float(solver.net.blobs[name].tensor.detach().sum()))
        if self.progress is not None:
            self.progress(stage, solver.iter, solver.param.max_iter,
                          {name: values[-1] for name, values in curves.items()})

    def _write_prototxt(self, stage: str, folder: Path) -> Path:
        """The stage's net and solver (and, for GA+CA, what its MIL loss reads)."""
        image_labels = None
        if stage == "ga_ca":
            if not self.class_stats.exists():
                write_class_stats(self.experiment, self.class_stats)
            if self.experiment.image_labels == "stage_start":
                image_labels = folder / "target_image_labels.npz"
                write_image_labels(self.experiment, self.initial_weights(stage),
                                   self.class_stats, image_labels)
        net, solver = self.experiment.stage_files(
            stage, str(self.class_stats.resolve()),
            str(image_labels.resolve()) if image_labels else None)
        solver.snapshot_after_train = True
        solver.snapshot_prefix = str((folder / "snapshots" / "stage").resolve())
        write_text(folder / "net.prototxt", net)
        write_text(folder / "solver.prototxt", solver)
        return folder / "solver.prototxt"


def _write_json(path: Path, data) -> None:
    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=1, default=default))
