"""An adaptation experiment: data, architecture and per-stage solver settings; its stages and
the net and solver each stage trains; the embedded synthetic benchmark's experiment."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import UsageError
from fcnwild.nets.frontend import (
    ARCHITECTURES,
    DataSpec,
    FrontEnd,
    adaptation_net,
    train_net,
)
from fcnwild.tools.experiment.settings import (
    ADVERSARIAL_WEIGHTS,
    DOMAIN_LOSS_NORMALIZATION,
    SolverSettings,
    solver_param,
)

STAGES = ("source_only", "ga", "ga_ca", "oracle")
STAGE_TITLES = {"source_only": "source only", "ga": "GA", "ga_ca": "GA+CA",
                "oracle": "oracle (target-trained)"}
# The stage each stage starts from (the others start from the experiment's initial weights).
PREVIOUS_STAGE = {"ga": "source_only", "ga_ca": "ga"}


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
    domain_normalization: int = DOMAIN_LOSS_NORMALIZATION   # settings.py says why
    mil: caffe_pb2.ConstrainedMILParameter | None = None
    # Where GA+CA's image-level labels come from: the MIL layer's rule applied online to the
    # net being trained ("online"), or once, by the net the stage starts from
    # ("stage_start"). Online, a class that drops out of one prediction is suppressed there
    # and cannot come back.
    image_labels: str = "stage_start"
    # The scores the MIL constraint sees: the coarse map at the net's output stride
    # ("final") or the map upsampled to the input ("upscore").
    mil_scores: str = "final"

    def datasets(self) -> list[tuple[str, str]]:
        """(dataset spec, split) of everything the stages read."""
        data = [self.source, self.target] + ([self.oracle] if self.oracle else [])
        return [(d.source, d.split) for d in data] + [self.evaluation]

    def stage_files(self, stage: str, class_stats: str, image_labels: str | None
                    ) -> tuple[caffe_pb2.NetParameter, caffe_pb2.SolverParameter]:
        """The net and solver of ``stage``, the net read as ``net.prototxt`` beside the
        solver, snapshots under ``snapshots/stage``; ``class_stats`` and ``image_labels``
        (files) feed GA+CA's MIL loss."""
        settings = self.settings[stage]
        if stage in ("source_only", "oracle"):
            data = self.source if stage == "source_only" else self.oracle
            if data is None:
                raise UsageError("the oracle stage needs labelled target training data")
            return (train_net(self.arch, stage, data),
                    solver_param("net.prototxt", "snapshots/stage", settings))
        category = stage == "ga_ca"
        net = adaptation_net(self.arch, stage, self.source, self.target, category=category,
                             class_stats=class_stats,
                             domain_normalization=self.domain_normalization, mil=self.mil,
                             image_labels=image_labels, mil_scores=self.mil_scores)
        return net, solver_param("net.prototxt", "snapshots/stage", settings,
                                 adversarial=self.arch, category=category)


def stage_order(stages: tuple[str, ...]) -> tuple[str, ...]:
    """``stages`` in the order they build on each other; an unknown stage is an error."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in stages)


# The demo's benchmark images and schedule: sized so that three seeds, each a different
# benchmark and initialisation, train in under ten minutes on two cores (tools/experiment/
# seeds.py runs their stages in parallel). On the dev seeds (10-13) GA+CA at 100 iterations
# scored as at 150, and 64x128 images at a third of these iterations left GA within a point
# of source-only.
DEMO_IMAGE_SIZE = (48, 96)
DEMO_ITERATIONS = {"source_only": 400, "oracle": 200, "ga": 200, "ga_ca": 100}


def synthetic_experiment(seed: int = 0, scale: float = 1.0, *, height: int | None = None,
                         width: int | None = None, images: int | None = None) -> Experiment:
    """The embedded benchmark with the demo's small front-end; ``scale`` stretches the
    iteration counts (1.0 = the schedule the README's figures were made with); the sizes
    (default ``DEMO_IMAGE_SIZE``) and ``images`` per split shrink or grow the benchmark."""
    height, width = height or DEMO_IMAGE_SIZE[0], width or DEMO_IMAGE_SIZE[1]
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
    adaptation = replace(supervised, base_lr=2e-4, lr_policy="poly", **ADVERSARIAL_WEIGHTS,
                         extra={**supervised.extra, "power": 0.9})
    settings = {stage: replace(adaptation if stage in ("ga", "ga_ca") else supervised,
                               max_iter=max(1, round(n * scale)))
                for stage, n in DEMO_ITERATIONS.items()}
    mil = caffe_pb2.ConstrainedMILParameter(lower_slack=0.5, upper_slack=2.0)
    return Experiment(ARCHITECTURES["small"], source, target, (spec, "target_val"), settings,
                      oracle=oracle, mil=mil)
