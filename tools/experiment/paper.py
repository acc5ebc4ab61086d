"""The nets and solvers of the paper's experiments, written to prototxt/.

Regenerate with ``python -m fcnwild.tools.experiment.paper prototxt`` (a test
checks the committed files are current). Dataset roots come from environment
variables (``${GTA5_ROOT}``, ``${CITYSCAPES_ROOT}``, ...), expanded by the
SegmentationData layer, so the files run unchanged on any machine. The
single-dataset nets also come as ``*_imagelabel`` twins for users who keep
image/label file lists: caffe-dilation's ImageLabelData in place of
SegmentationData, the lists named by variables such as
``${CITYSCAPES_TRAIN_IMAGE_LIST}`` / ``${CITYSCAPES_TRAIN_LABEL_LIST}``. The solver
settings are ``settings.SOURCE_ONLY`` and ``settings.ADAPTATION``; the adversarial losses'
normalization and weights follow ``settings.DOMAIN_LOSS_NORMALIZATION`` and
``settings.ADVERSARIAL_WEIGHTS``, as the demo's do.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from fcnwild.base import caffe_pb2
from fcnwild.nets.dilation_train import image_label_data_layer
from fcnwild.nets.frontend import (
    ARCHITECTURES,
    DataSpec,
    FrontEnd,
    adaptation_net,
    deploy_net,
    train_net,
)
from fcnwild.nets.prototxt import to_text
from fcnwild.tools.experiment.config import synthetic_experiment
from fcnwild.tools.experiment.settings import (
    ADAPTATION,
    DOMAIN_LOSS_NORMALIZATION,
    SOURCE_ONLY,
    solver_param,
)


@dataclass(frozen=True)
class Adaptation:
    """One source -> target experiment of the paper."""
    folder: str
    title: str
    source: DataSpec
    target: DataSpec
    evaluation: DataSpec
    num_classes: int = 19


def _data(source: str, split: str = "train", *options: str) -> DataSpec:
    return DataSpec(source=source, split=split, options=options)


def _evaluation(spec: DataSpec) -> DataSpec:
    return replace(spec, mirror=False, random_crop=False, shuffle=False)


CITYSCAPES = "cityscapes:${CITYSCAPES_ROOT}"
EXPERIMENTS = (
    Adaptation("gta5_to_cityscapes", "GTA5 -> Cityscapes",
               _data("gta5:${GTA5_ROOT}", "all"), _data(CITYSCAPES, "train"),
               _evaluation(_data(CITYSCAPES, "val"))),
    Adaptation("synthia_to_cityscapes", "SYNTHIA-RAND-CITYSCAPES -> Cityscapes",
               _data("synthia:${SYNTHIA_RAND_ROOT}", "all"), _data(CITYSCAPES, "train"),
               _evaluation(_data(CITYSCAPES, "val"))),
    Adaptation("cityscapes_cross_city", "Cityscapes train -> val (cross-city)",
               _data(CITYSCAPES, "train"), _data(CITYSCAPES, "val"),
               _evaluation(_data(CITYSCAPES, "val"))),
    Adaptation("synthia_seasons", "SYNTHIA-SEQS summer -> winter (13 classes)",
               _data("synthia-seqs:${SYNTHIA_SEQS_ROOT}", "all", "season=summer"),
               _data("synthia-seqs:${SYNTHIA_SEQS_ROOT}", "all", "season=winter"),
               _evaluation(_data("synthia-seqs:${SYNTHIA_SEQS_ROOT}", "all", "season=winter")),
               num_classes=13),
    Adaptation("cityscapes_to_bdd", "Cityscapes -> BDDS",
               _data(CITYSCAPES, "train"), _data("bdd:${BDD_ROOT}", "train"),
               _evaluation(_data("bdd:${BDD_ROOT}", "val"))),
)

def list_variables(spec: DataSpec) -> tuple[str, str]:
    """The image and label list variables for a dataset split, e.g.
    ``${GTA5_ALL_IMAGE_LIST}``, ``${SYNTHIA_SEQS_ALL_WINTER_LABEL_LIST}``."""
    dataset = re.search(r"\$\{(\w+)_ROOT\}", spec.source).group(1)
    stem = "_".join([dataset, spec.split.upper()] +
                    [option.partition("=")[2].upper() for option in spec.options])
    return f"${{{stem}_IMAGE_LIST}}", f"${{{stem}_LABEL_LIST}}"


def image_label_twin(net: caffe_pb2.NetParameter, spec: DataSpec, arch: FrontEnd
                     ) -> caffe_pb2.NetParameter:
    """``net`` reading ``spec``'s split from file lists with caffe-dilation's ImageLabelData:
    the same crop, margin, mean, mirror and order, the label at full resolution."""
    if net.layer[0].type != "SegmentationData":
        raise ValueError(f"net {net.name!r} does not start with a SegmentationData layer")
    twin = caffe_pb2.NetParameter()
    twin.CopyFrom(net)
    twin.layer[0].CopyFrom(image_label_data_layer(
        *list_variables(spec), spec.batch_size, spec.mirror, spec.crop_size, spec.mean,
        label_stride=1, margin=arch.margin, shuffle=spec.shuffle))
    return twin


def _twin_header(title: str, spec: DataSpec) -> str:
    images, labels = list_variables(spec)
    return (f"{title}\nImageLabelData twin: {images} and {labels} name list files of images "
            "and of train-id label PNGs (255 = ignore), matched by position.")


def experiment_files(experiment: Adaptation, arch: FrontEnd
                     ) -> list[tuple[str, caffe_pb2.Message, str]]:
    """(relative path, message, header) for one experiment's nets and solvers."""
    arch = replace(arch, num_classes=experiment.num_classes)
    folder, title = experiment.folder, experiment.title
    files = [
        (f"{folder}/source_only_net.prototxt",
         train_net(arch, f"{folder}_source_only", experiment.source),
         f"{title}: source-only training of the dilated front-end."),
        (f"{folder}/test_net.prototxt",
         train_net(arch, f"{folder}_test", experiment.evaluation, caffe_pb2.TEST),
         f"{title}: scoring on the labelled target split (evaluation only)."),
        (f"{folder}/source_only_solver.prototxt",
         solver_param("source_only_net.prototxt", "snapshots/source_only", SOURCE_ONLY),
         f"{title}: source-only solver; initialise from VGG-16 with `fcnwild surgery`."),
        (f"{folder}/source_only_net_imagelabel.prototxt",
         image_label_twin(train_net(arch, f"{folder}_source_only", experiment.source),
                          experiment.source, arch),
         _twin_header(f"{title}: source-only training from file lists.", experiment.source)),
        (f"{folder}/test_net_imagelabel.prototxt",
         image_label_twin(train_net(arch, f"{folder}_test", experiment.evaluation,
                                    caffe_pb2.TEST), experiment.evaluation, arch),
         _twin_header(f"{title}: scoring from file lists.", experiment.evaluation)),
        (f"{folder}/source_only_solver_imagelabel.prototxt",
         solver_param("source_only_net_imagelabel.prototxt", "snapshots/source_only",
                      SOURCE_ONLY),
         f"{title}: source-only solver over the ImageLabelData twin."),
    ]
    for stage, category in (("ga", False), ("ga_ca", True)):
        what = "global alignment" if not category else "global + category-specific alignment"
        files.append((f"{folder}/{stage}_net.prototxt",
                      adaptation_net(arch, f"{folder}_{stage}", experiment.source,
                                     experiment.target, category=category,
                                     domain_normalization=DOMAIN_LOSS_NORMALIZATION),
                      f"{title}: {what} (one shared network over [source; target])." +
                      ("\nclass_stats.json: `fcnwild stats` on the source dataset." if category
                       else "")))
        files.append((f"{folder}/{stage}_solver.prototxt",
                      solver_param(f"{stage}_net.prototxt", f"snapshots/{stage}", ADAPTATION,
                                   adversarial=arch, category=category),
                      f"{title}: alternating solver for {what}; initialise from the previous "
                      "stage's snapshot (fcnwild train --weights)."))
    return files


def all_files() -> list[tuple[str, caffe_pb2.Message, str]]:
    arch = ARCHITECTURES["frontend"]
    cityscapes = EXPERIMENTS[0].target
    validation = _evaluation(_data(CITYSCAPES, "val"))
    files = [
        ("frontend/deploy.prototxt", deploy_net(arch, "frontend_cityscapes"),
         "The dilated VGG-16 front-end (Yu & Koltun), 19 Cityscapes classes, deploy.\n"
         "Output: class probabilities at 1/8 resolution, (input - 372) / 8 per side."),
        ("frontend/train_net.prototxt", train_net(arch, "frontend_cityscapes", cityscapes),
         "The front-end trained on Cityscapes train, crop 500, bilinear x8 upsampling."),
        ("frontend/test_net.prototxt",
         train_net(arch, "frontend_cityscapes_test", validation, caffe_pb2.TEST),
         "The front-end scored on Cityscapes val."),
        ("frontend/solver.prototxt", _with_test(solver_param(
            "train_net.prototxt", "snapshots/frontend", SOURCE_ONLY)),
         "fyu/dilation's front-end training defaults."),
        ("frontend/train_net_imagelabel.prototxt",
         image_label_twin(train_net(arch, "frontend_cityscapes", cityscapes), cityscapes, arch),
         _twin_header("The front-end trained on Cityscapes train from file lists.",
                      cityscapes)),
        ("frontend/test_net_imagelabel.prototxt",
         image_label_twin(train_net(arch, "frontend_cityscapes_test", validation,
                                    caffe_pb2.TEST), validation, arch),
         _twin_header("The front-end scored on Cityscapes val from file lists.", validation)),
        ("frontend/solver_imagelabel.prototxt", _with_test(solver_param(
            "train_net_imagelabel.prototxt", "snapshots/frontend", SOURCE_ONLY),
            "test_net_imagelabel.prototxt"),
         "fyu/dilation's front-end training defaults, over the ImageLabelData twins."),
    ]
    for experiment in EXPERIMENTS:
        files += experiment_files(experiment, arch)
    return files + synthetic_files()


def synthetic_files() -> list[tuple[str, caffe_pb2.Message, str]]:
    """The demo's small nets and solvers on the embedded synthetic benchmark."""
    e = synthetic_experiment()
    title = "Embedded synthetic benchmark (fcnwild demo)"
    files = [("synthetic/deploy.prototxt", deploy_net(e.arch, "synthetic_deploy", 64),
              f"{title}: the small dilated front-end, deploy (scores at 1/{e.arch.stride}).")]
    for stage, data in (("source_only", e.source), ("oracle", e.oracle)):
        files.append((f"synthetic/{stage}_net.prototxt", train_net(e.arch, stage, data),
                      f"{title}: {stage.replace('_', ' ')} training."))
        files.append((f"synthetic/{stage}_solver.prototxt",
                      solver_param(f"{stage}_net.prototxt", f"snapshots/{stage}",
                                   e.settings[stage]), f"{title}: {stage} solver."))
    for stage, category in (("ga", False), ("ga_ca", True)):
        files.append((f"synthetic/{stage}_net.prototxt",
                      adaptation_net(e.arch, stage, e.source, e.target, category=category,
                                     domain_normalization=e.domain_normalization, mil=e.mil),
                      f"{title}: {stage} net." +
                      ("\nImage-level labels: the layer's online rule here; `fcnwild demo` "
                       "predicts them once\nwith the GA model instead (see tools/experiment/run.py)."
                       if category else "")))
        files.append((f"synthetic/{stage}_solver.prototxt",
                      solver_param(f"{stage}_net.prototxt", f"snapshots/{stage}",
                                   e.settings[stage], adversarial=e.arch, category=category),
                      f"{title}: alternating solver, {stage}."))
    return files


def _with_test(param: caffe_pb2.SolverParameter, test_net: str = "test_net.prototxt"
               ) -> caffe_pb2.SolverParameter:
    param.test_net.append(test_net)
    param.test_iter.append(500)
    param.test_interval = 4000
    param.test_initialization = False
    return param


def write_all(root: Path) -> list[Path]:
    written = []
    for relative, message, header in all_files():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = to_text(message, header + "\nWritten by `python -m fcnwild.tools.experiment.paper "
                       "prototxt`; edit nets/frontend.py or tools/experiment/ instead.")
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "prototxt")):
        print(written_path)
