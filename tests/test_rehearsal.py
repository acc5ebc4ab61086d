"""A rehearsal of the real-data recipe: the synthetic benchmark in the GTA5 and Cityscapes
layouts, run through the shipped prototxt/gta5_to_cityscapes nets and solvers, every stage,
unchanged except for the iteration counts, the crops per update, and a width reduction with
the learning rate that keeps its effect: every layer of 64 or more outputs has SHRINK times
fewer, and every stage learns at SHRINK times the shipped rate.

Why the rate: one SGD step moves a unit's output by about lr x fan-in x E[h^2] x its
gradient, so a net SHRINK times narrower needs SHRINK times the rate for a step to move the
domain classifier's scores (and the representation under them) as far as at full width. The
domain map keeps its full size (a 500 px crop: 16 x 16 units per image), so a summed domain
loss has the gradient it has at full width. With this rule the miniature reproduces what the
summed (``normalization: NONE``) losses did at full width: the domain classifier pinned at
accuracy 0.5 with a loss in the thousands after one update, the weights blown up, NaN next.
"""
from __future__ import annotations

import functools
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import DivergenceError
from fcnwild.data.class_stats import compute_class_stats, save_class_stats
from fcnwild.data.datasets import open_dataset
from fcnwild.data.synthetic import ShiftConfig
from fcnwild.data.synthetic_layouts import write_real_layouts
from fcnwild.nets.frontend import DataSpec
from fcnwild.nets.prototxt import read_solver_param
from fcnwild.solvers import create_solver
from fcnwild.tools import adapt_cmd, cli

SHIPPED = Path(__file__).parents[1] / "prototxt" / "gta5_to_cityscapes"
SHRINK = 32
ITERATIONS = {"source_only": 1, "ga": 3, "ga_ca": 3}
ITER_SIZE = 2      # the shipped 14 / 7 crops per update, cut for the suite's time
# Caffe's SoftmaxWithLoss clips each unit's loss at -log(FLT_MIN).
CLIP = -math.log(np.finfo(np.float32).tiny)


def summed_domain_losses(net: caffe_pb2.NetParameter,
                         solver: caffe_pb2.SolverParameter) -> None:
    """The adversarial settings before the one rule: domain losses summed over the units,
    lambda 1, the classifier at the representation's rate, MIL weight 1."""
    for layer in net.layer:
        if layer.name in ("dom_loss", "dom_loss_inv"):
            layer.loss_param.normalization = caffe_pb2.LossParameter.NONE
    solver.adversarial_param.classifier_lr_mult = 1
    for loss in solver.adversarial_param.representation_loss:
        old = {"dom_loss": 0.5, "dom_loss_inv": 0.5, "mil_loss": 1}
        loss.weight = old.get(loss.top, loss.weight)


def miniature(folder: Path, stage: str, change=None) -> Path:
    """The shipped net and solver of ``stage`` in ``folder``: conv widths / SHRINK, the rate
    x SHRINK, the iteration count of ITERATIONS, ITER_SIZE, data read in the training
    process, no intermediate snapshots; ``change(net, solver)`` edits both further."""
    net = text_format.Parse((SHIPPED / f"{stage}_net.prototxt").read_text(), caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "SegmentationData":
            layer.segmentation_data_param.workers = 0   # reader processes cost more than tiny crops
        if layer.type == "Convolution" and layer.convolution_param.num_output >= 64:
            layer.convolution_param.num_output //= SHRINK
    solver = text_format.Parse((SHIPPED / f"{stage}_solver.prototxt").read_text(),
                               caffe_pb2.SolverParameter())
    solver.base_lr *= SHRINK
    solver.max_iter, solver.display, solver.snapshot = ITERATIONS[stage], 1, 0
    solver.iter_size = ITER_SIZE
    solver.snapshot_prefix = str(folder / "snapshots" / stage)
    if change is not None and stage != "source_only":
        change(net, solver)
    (folder / f"{stage}_net.prototxt").write_text(text_format.MessageToString(net))
    path = folder / f"{stage}_solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def unit_domain_loss(net) -> float:
    """The domain classifier's cross-entropy per output unit (whatever the loss layers'
    normalization), clipped as Caffe clips it: log 2 = 0.69 when it cannot tell."""
    scores = torch.log_softmax(net.blobs["dom_score"].tensor.detach().double(), dim=1)
    labels = net.blobs["domain_label"].tensor.detach().long()
    labels = labels.reshape(scores.shape[0], 1, *scores.shape[2:])
    return float((-scores.gather(1, labels)).clamp(max=CLIP).mean())


def run_stage(folder: Path, stage: str, weights: Path | None, change=None):
    solver = create_solver(miniature(folder, stage, change))
    if weights is not None:
        solver.net.copy_from(weights)
    terms: dict[str, list[float]] = {}

    def record(s, loss: float) -> None:
        values = dict(getattr(s, "step_losses", None) or {"loss": loss})
        if "dom_score" in s.net.blobs:
            values["unit_domain_loss"] = unit_domain_loss(s.net)
            values["dom_accuracy"] = float(s.net.blobs["dom_accuracy"].data.sum())
        for name, value in values.items():
            terms.setdefault(name, []).append(value)
    solver.hooks.append(record)
    solver.solve()
    solver.net.save(folder / f"{stage}.caffemodel")
    return solver, terms


def rehearse(tmp_path: Path, monkeypatch, change=None):
    """Every stage of the miniature in turn; yields (stage, solver, terms)."""
    gta5, cityscapes = write_real_layouts(
        tmp_path / "data", ShiftConfig(n_source_train=6, n_target_train=6, n_target_val=2))
    monkeypatch.setenv("GTA5_ROOT", str(gta5))
    monkeypatch.setenv("CITYSCAPES_ROOT", str(cityscapes))
    folder = tmp_path / "run"
    folder.mkdir()
    save_class_stats(compute_class_stats(open_dataset(f"gta5:{gta5}", "all"), progress=False),
                     folder / "class_stats.json")
    weights = None
    for stage in ("source_only", "ga", "ga_ca"):
        solver, terms = run_stage(folder, stage, weights, change)
        weights = folder / f"{stage}.caffemodel"
        yield stage, solver, terms


def test_the_shipped_gta5_to_cityscapes_configs_train_every_stage(tmp_path, monkeypatch):
    for stage, solver, terms in rehearse(tmp_path, monkeypatch):
        for name, values in terms.items():
            assert len(values) == ITERATIONS[stage]
            assert all(math.isfinite(v) for v in values), f"{stage}: {name} = {values}"
        # The final snapshot is a good state: no weight grew 100x (the divergence guard's rule).
        assert solver.last_good is not None and solver.last_good[0] == solver.iter, stage
        if stage == "source_only":
            continue
        # Learning, not pinned: a classifier stuck at exactly 0.5 (one domain everywhere) or
        # 1.0 has stopped teaching the representation anything.
        later = terms["dom_accuracy"][1:]
        assert not all(a in (0.5, 1.0) for a in later), f"{stage}: dom_accuracy {later}"
        # Far from the clip: a mean of 10 per unit gives the true domain e^-10.
        assert max(terms["unit_domain_loss"]) < 10, f"{stage}: {terms['unit_domain_loss']}"
        assert max(terms["loss"]) < 10, f"{stage}: segmentation loss {terms['loss']}"


def test_summed_domain_losses_diverge_in_the_miniature(tmp_path, monkeypatch):
    """The checks above can fail: with the summed losses the same miniature diverges as the
    full-width net did."""
    stages = rehearse(tmp_path, monkeypatch, summed_domain_losses)
    next(stages)                                      # source-only: unaffected
    with pytest.raises(DivergenceError, match="ga_solver.prototxt.*training diverged"):
        next(stages)


def test_adapt_runs_every_stage_on_real_layouts(tmp_path, capsys, monkeypatch):
    """``fcnwild adapt --source gta5:... --target cityscapes:...`` as the README gives it
    (the small architecture, a few iterations): every stage trains and is scored."""
    # Data read in the training process: reader processes cost more than tiny crops.
    monkeypatch.setattr(adapt_cmd, "DataSpec", functools.partial(DataSpec, workers=0))
    gta5, cityscapes = write_real_layouts(
        tmp_path / "data", ShiftConfig(n_source_train=4, n_target_train=4, n_target_val=2))
    out = tmp_path / "adapt"
    assert cli.main(["adapt", "--source", f"gta5:{gta5}", "--source-split", "all",
                     "--target", f"cityscapes:{cityscapes}", "--target-split", "train",
                     "--eval-split", "val", "--out", str(out), "--arch", "small",
                     "--crop", "48", "--iter-size", "1",
                     "--iterations", "source_only=3,ga=3,ga_ca=3"]) == 0
    results = json.loads((out / "adapt_results.json").read_text())
    assert list(results) == ["source_only", "ga", "ga_ca"]
    for stage, result in results.items():
        assert result["iterations"] == 3 and result["num_images"] == 2
        assert 0 <= result["mean_iou"]["19"] <= 1
        curves = json.loads((out / stage / "curves.json").read_text())
        assert all(math.isfinite(v) for values in curves.values() for v in values)
    ga_ca = json.loads((out / "ga_ca" / "curves.json").read_text())
    assert {"dom_accuracy", "mil_loss"} <= set(ga_ca)
    assert "GA+CA" in capsys.readouterr().out


def readme_recipe() -> list[list[str]]:
    """The ``fcnwild`` command lines of the README's "Real data" block, in order."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("## Real data", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("fcnwild ")]


def test_the_readme_recipe_chains_the_shipped_files():
    """The README's commands parse, and each stage starts from the snapshot the previous
    stage's shipped solver writes last; GA+CA reads the class statistics where the stats
    command writes them (what benchmarks/bench_rehearsal.py runs, stage by stage)."""
    parser = cli.build_parser()
    commands = [parser.parse_args(argv[1:]) for argv in readme_recipe()]
    verbs = [c.verb for c in commands]
    assert verbs == ["surgery", "adapt", "stats", "train", "train", "train", "eval"]
    surgery, stats, trains, evaluation = commands[0], commands[2], commands[3:6], commands[6]
    repo = Path(__file__).parents[1]
    assert (repo / surgery.model).is_file() and evaluation.model == surgery.model
    weights = surgery.output
    for train, stage in zip(trains, ("source_only", "ga", "ga_ca")):
        assert train.solver == f"prototxt/gta5_to_cityscapes/{stage}_solver.prototxt"
        assert train.weights == weights
        solver = read_solver_param(repo / train.solver)
        weights = f"{solver.snapshot_prefix}_iter_{solver.max_iter}.caffemodel"
    assert evaluation.weights == weights
    net = text_format.Parse((SHIPPED / "ga_ca_net.prototxt").read_text(), caffe_pb2.NetParameter())
    assert [layer.constrained_mil_param.class_stats for layer in net.layer
            if layer.type == "ConstrainedMILLoss"] == [stats.out]
