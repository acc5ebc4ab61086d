"""Solver settings of an experiment's stages, and the SolverParameter each becomes.

The adaptation stages get the alternating adversarial solver's parameters: the
domain classifier minimises L_D; the representation minimises
L_seg + lambda/2 (L_D + L_Dinv) [+ mu L_mi] (no gradient reversal).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fcnwild.base import caffe_pb2
from fcnwild.nets.frontend import FrontEnd, classifier_layer_names


@dataclass(frozen=True)
class SolverSettings:
    base_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "fixed"
    max_iter: int = 20000
    iter_size: int = 1
    display: int = 20
    snapshot: int = 2000
    solver_type: str = "SGD"
    classifier_lr_mult: float = 1.0
    domain_weight: float = 1.0       # lambda of the representation's 1/2 (L_D + L_Dinv)
    mil_weight: float = 1.0          # weight of L_mi
    random_seed: int = 0
    extra: dict = field(default_factory=dict)   # further SolverParameter fields


def solver_param(net: str, prefix: str, settings: SolverSettings, *,
                 adversarial: FrontEnd | None = None, category: bool = False
                 ) -> caffe_pb2.SolverParameter:
    """The solver of ``net``; with ``adversarial`` (the architecture whose domain
    classifier it trains) the alternating solver, with L_mi when ``category``."""
    s = settings
    param = caffe_pb2.SolverParameter(
        net=net, type=s.solver_type, base_lr=s.base_lr, lr_policy=s.lr_policy,
        weight_decay=s.weight_decay, max_iter=s.max_iter, iter_size=s.iter_size,
        display=s.display, snapshot=s.snapshot, snapshot_prefix=prefix,
        random_seed=s.random_seed, average_loss=20)
    if s.solver_type in ("SGD", "Nesterov", "Adam", "AdaDelta"):
        param.momentum = s.momentum
    for key, value in s.extra.items():
        setattr(param, key, value)
    if adversarial is not None:
        a = param.adversarial_param
        a.classifier_layer.extend(classifier_layer_names(adversarial))
        a.classifier_lr_mult = s.classifier_lr_mult
        a.classifier_loss.add(top="dom_loss", weight=1)
        a.representation_loss.add(top="loss", weight=1)
        a.representation_loss.add(top="dom_loss", weight=0.5 * s.domain_weight)
        a.representation_loss.add(top="dom_loss_inv", weight=0.5 * s.domain_weight)
        if category:
            a.representation_loss.add(top="mil_loss", weight=s.mil_weight)
    return param


# The adversarial losses' rule, one for every experiment (the paper's configurations and the
# demo alike). The domain losses are averaged over the classifier's output units (VALID):
# summed (the paper's eq. 2-5 as written), their gradient grows with the number of units (a
# 500 px crop's 1/8 map: thousands per image), and one update of the front-end at the
# segmentation loss's rate drives the domain classifier to certainty at once, its loss
# clipped at -log(FLT_MIN) = 87.3 per unit and the representation's gradients with it. Mean
# losses are independent of the map size and the batch, so one rule serves every crop,
# image size and net width. With them the representation weighs the domain terms by
# lambda = 0.1 and the MIL term by 0.05 against the segmentation loss, and the domain
# classifier learns at 5x the representation's rate so that it keeps up with it.
DOMAIN_LOSS_NORMALIZATION = caffe_pb2.LossParameter.VALID
ADVERSARIAL_WEIGHTS = dict(classifier_lr_mult=5.0, domain_weight=0.1, mil_weight=0.05)

# fyu/dilation's front-end defaults (SGD, lr 1e-4, momentum 0.9, weight decay 5e-4, 14 images
# per update as batch 1 x iter_size 14); the adaptation stages fine-tune from the previous
# stage at lr 1e-5 with 7 source + 7 target images per update.
SOURCE_ONLY = SolverSettings(base_lr=1e-4, iter_size=14, max_iter=40000, snapshot=4000)
ADAPTATION = SolverSettings(base_lr=1e-5, iter_size=7, max_iter=20000, snapshot=2000,
                            **ADVERSARIAL_WEIGHTS)
