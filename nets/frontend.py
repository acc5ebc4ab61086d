"""The dilated front-end family (Yu & Koltun) and FCNs in the Wild's nets on it, as
NetParameter data (Caffe's net_spec idea, for this one family).

The prototxt files under prototxt/ are written from here by the experiment
module (``fcnwild.tools.experiment``; a test checks they are current), and
``fcnwild adapt`` builds its nets the same way, so a published spec and what the
tools train can never drift apart.

Nets of one architecture:
- ``deploy_net``: Input -> front-end -> Softmax ``prob`` at 1/8 resolution;
- ``train_net`` / ``test_net``: SegmentationData -> front-end -> fixed bilinear
  x8 Deconvolution -> SoftmaxWithLoss (ignore 255) [+ Accuracy];
- ``adaptation_net``: source and target batches concatenated into one batch
  through one shared network (target labels all 255, so the segmentation loss
  sees source pixels only); with global alignment, a pixel-level domain
  classifier on fc7 (1x1 convs, ReLU, dropout, then 2 outputs per unit) with
  L_D and L_Dinv summed over all units; with category adaptation, the
  constrained MIL loss on the target images' coarse scores.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fcnwild.base import caffe_pb2
from fcnwild.data.labels import CITYSCAPES_MEAN_BGR


@dataclass(frozen=True)
class FrontEnd:
    """One member of the family. The default is the published VGG-16 front-end."""
    num_classes: int = 19
    block_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    block_depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    block_dilations: tuple[int, ...] = (1, 1, 1, 1, 2)
    pooled_blocks: int = 3              # 2x2 max pools after blocks 1..3 (pool4/5 removed)
    fc_width: int = 4096
    fc6_kernel: int = 7
    fc6_dilation: int = 4
    dropout: float = 0.5
    padded: bool = False                # the published nets pad nothing (see margin)
    domain_widths: tuple[int, ...] = (1024, 1024)   # hidden 1x1 convs of the domain classifier
    domain_dropout: float = 0.5
    # Nets trained from scratch (the demo's) scale Caffe's 0-255 mean-subtracted input
    # down first; the published nets start from VGG-16, which expects it unscaled.
    input_scale: float = 1.0

    @property
    def stride(self) -> int:
        return 2 ** self.pooled_blocks

    @property
    def margin(self) -> int:
        """Context lost on each side (input pixels), 0 for padded nets: 186 for the
        published front-end, whose output is (input - 372) / 8."""
        if self.padded:
            return 0
        lost, scale = 0, 1
        for block, (depth, dilation) in enumerate(zip(self.block_depths,
                                                      self.block_dilations)):
            lost += depth * 2 * dilation * scale // 2
            if block < self.pooled_blocks:
                scale *= 2
        lost += (self.fc6_kernel - 1) * self.fc6_dilation * scale // 2
        return lost


# Named architectures. "small" is the demo's: the same structure at 1/8 width, padded,
# pooling twice (output stride 4, dilations taking over earlier) so the embedded
# benchmark's 64 x 128 images keep their poles and people, and train in minutes on a CPU.
ARCHITECTURES = {
    "frontend": FrontEnd(),
    "small": FrontEnd(block_widths=(16, 32, 48, 64, 64), block_depths=(1, 1, 2, 2, 1),
                      block_dilations=(1, 1, 1, 2, 2), pooled_blocks=2, fc_width=128,
                      fc6_kernel=3, fc6_dilation=4, padded=True, domain_widths=(64, 64),
                      dropout=0.0, domain_dropout=0.0, input_scale=1 / 128),
}


@dataclass(frozen=True)
class DataSpec:
    """A SegmentationData layer's source and transform."""
    source: str                          # dataset spec, e.g. "cityscapes:${CITYSCAPES_ROOT}"
    split: str = "train"
    options: tuple[str, ...] = ()
    batch_size: int = 1
    crop_size: int = 500
    mean: tuple[float, float, float] = CITYSCAPES_MEAN_BGR
    mirror: bool = True
    random_crop: bool = True
    shuffle: bool = True
    workers: int = 2
    seed: int = 0
    scale: tuple[float, float] = (1.0, 1.0)
    unlabelled: bool = False


# --------------------------------------------------------------------------- layers
def _layer(name: str, type_: str, bottom=(), top=(), **fields) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter(name=name, type=type_)
    layer.bottom.extend([bottom] if isinstance(bottom, str) else bottom)
    layer.top.extend([top] if isinstance(top, str) else top)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(layer, key).extend(value)
        else:
            getattr(layer, key).CopyFrom(value) if hasattr(value, "CopyFrom") else \
                setattr(layer, key, value)
    return layer


def _learned() -> list[caffe_pb2.ParamSpec]:
    return [caffe_pb2.ParamSpec(lr_mult=1, decay_mult=1), caffe_pb2.ParamSpec(lr_mult=2,
                                                                              decay_mult=0)]


def _conv(name: str, bottom: str, outputs: int, kernel: int = 1, dilation: int = 1,
          pad: int = 0, std: float | None = None) -> caffe_pb2.LayerParameter:
    param = caffe_pb2.ConvolutionParameter(num_output=outputs)
    param.kernel_size.append(kernel)
    if dilation > 1:
        param.dilation.append(dilation)
    if pad:
        param.pad.append(pad)
    if std is None:
        param.weight_filler.type = "msra"
    else:
        param.weight_filler.type, param.weight_filler.std = "gaussian", std
    param.bias_filler.type = "constant"
    return _layer(name, "Convolution", bottom, name, param=_learned(), convolution_param=param)


def front_end_layers(arch: FrontEnd, phase: int, bottom: str = "data"
                     ) -> list[caffe_pb2.LayerParameter]:
    """conv1_1 ... fc7 and the 1x1 classifier ``final`` (coarse scores at 1/stride)."""
    layers, current = [], bottom
    if arch.input_scale != 1:
        layers.append(_layer("input_scale", "Power", bottom, "scaled_data",
                             power_param=caffe_pb2.PowerParameter(scale=arch.input_scale)))
        current = "scaled_data"
    for block, (width, depth, dilation) in enumerate(
            zip(arch.block_widths, arch.block_depths, arch.block_dilations), start=1):
        for i in range(1, depth + 1):
            name = f"conv{block}_{i}"
            layers.append(_conv(name, current, width, 3, dilation,
                                pad=dilation if arch.padded else 0))
            layers.append(_layer(f"relu{block}_{i}", "ReLU", name, name))
            current = name
        if block <= arch.pooled_blocks:
            pool = caffe_pb2.PoolingParameter(pool=caffe_pb2.PoolingParameter.MAX,
                                              kernel_size=2, stride=2)
            layers.append(_layer(f"pool{block}", "Pooling", current, f"pool{block}",
                                 pooling_param=pool))
            current = f"pool{block}"
    fc6_pad = (arch.fc6_kernel - 1) * arch.fc6_dilation // 2 if arch.padded else 0
    for name, kernel, dilation, pad in (("fc6", arch.fc6_kernel, arch.fc6_dilation, fc6_pad),
                                        ("fc7", 1, 1, 0)):
        layers.append(_conv(name, current, arch.fc_width, kernel, dilation, pad))
        layers.append(_layer(f"relu{name[2:]}", "ReLU", name, name))
        current = name
        if arch.dropout and phase == caffe_pb2.TRAIN:
            # drop6 works in place; drop7 must not: fc7 itself feeds the domain classifier.
            drop = name if name == "fc6" else f"drop{name[2:]}"
            layers.append(_layer(f"drop{name[2:]}", "Dropout", current, drop,
                                 dropout_param=caffe_pb2.DropoutParameter(
                                     dropout_ratio=arch.dropout)))
            current = drop
    layers.append(_conv("final", current, arch.num_classes, std=0.001))
    return layers


def _upsample(arch: FrontEnd, bottom: str = "final", top: str = "upscore"
              ) -> caffe_pb2.LayerParameter:
    """Fixed bilinear x stride upsampling (k = 2s, pad s/2, one group per class)."""
    s = arch.stride
    param = caffe_pb2.ConvolutionParameter(num_output=arch.num_classes, group=arch.num_classes,
                                           bias_term=False)
    param.kernel_size.append(2 * s)
    param.stride.append(s)
    param.pad.append(s // 2)
    param.weight_filler.type = "bilinear"
    return _layer("upsample", "Deconvolution", bottom, top,
                  param=[caffe_pb2.ParamSpec(lr_mult=0, decay_mult=0)],
                  convolution_param=param)


def _data_layer(name: str, tops: list[str], data: DataSpec, arch: FrontEnd
                ) -> caffe_pb2.LayerParameter:
    p = caffe_pb2.SegmentationDataParameter(
        source=data.source, split=data.split, batch_size=data.batch_size,
        crop_size=data.crop_size, margin=arch.margin, mirror=data.mirror,
        random_crop=data.random_crop, shuffle=data.shuffle, unlabelled=data.unlabelled,
        workers=data.workers, seed=data.seed, scale_min=data.scale[0], scale_max=data.scale[1])
    p.mean.extend(data.mean)
    p.option.extend(data.options)
    return _layer(name, "SegmentationData", top=tops, segmentation_data_param=p)


def _seg_loss(bottom: str = "upscore", label: str = "label") -> list[caffe_pb2.LayerParameter]:
    loss = caffe_pb2.LossParameter(ignore_label=255)
    return [_layer("loss", "SoftmaxWithLoss", [bottom, label], "loss", loss_param=loss),
            _layer("accuracy", "Accuracy", [bottom, label], "accuracy",
                   accuracy_param=caffe_pb2.AccuracyParameter(ignore_label=255))]


# --------------------------------------------------------------------------- nets
def deploy_net(arch: FrontEnd, name: str, input_size: int = 500) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name=name)
    inputs = caffe_pb2.InputParameter()
    inputs.shape.add().dim.extend([1, 3, input_size, input_size])
    net.layer.append(_layer("input", "Input", top="data", input_param=inputs))
    net.layer.extend(front_end_layers(arch, caffe_pb2.TEST))
    net.layer.append(_layer("prob", "Softmax", "final", "prob"))
    return net


def train_net(arch: FrontEnd, name: str, data: DataSpec, phase: int = caffe_pb2.TRAIN
              ) -> caffe_pb2.NetParameter:
    """Source-only training (or, in TEST phase, scoring) of the segmentation net."""
    net = caffe_pb2.NetParameter(name=name)
    net.layer.append(_data_layer("data", ["data", "label"], data, arch))
    net.layer.extend(front_end_layers(arch, phase))
    net.layer.append(_upsample(arch))
    net.layer.extend(_seg_loss())
    return net


def adaptation_net(arch: FrontEnd, name: str, source: DataSpec, target: DataSpec, *,
                   category: bool, class_stats: str = "class_stats.json",
                   domain_normalization: int = caffe_pb2.LossParameter.NONE,
                   mil: caffe_pb2.ConstrainedMILParameter | None = None,
                   image_labels: str | None = None, mil_scores: str = "final"
                   ) -> caffe_pb2.NetParameter:
    """GA (``category=False``) or GA+CA: one weight-shared network over [source; target].

    The domain losses are summed over all units (eq. 2-5) unless ``domain_normalization``
    says otherwise; ``mil`` overrides the MIL layer's defaults (bounds' slack, hardness);
    ``image_labels`` (a file of per-image present classes) replaces the MIL layer's online
    image-label prediction. ``mil_scores`` is the score blob the MIL loss constrains: the
    coarse ``final`` map or the ``upscore`` map upsampled to the input."""
    if mil_scores not in ("final", "upscore"):
        raise ValueError(f"mil_scores {mil_scores!r}: expected 'final' or 'upscore'")
    net = caffe_pb2.NetParameter(name=name)
    target = replace(target, unlabelled=True)
    net.layer.append(_data_layer("source_data", ["source_data", "source_label"], source, arch))
    target_tops = ["target_data", "target_label"]
    if category and image_labels:
        target_tops.append("target_image_labels")
    target_layer = _data_layer("target_data", target_tops, target, arch)
    if category and image_labels:
        target_layer.segmentation_data_param.image_labels = image_labels
    net.layer.append(target_layer)
    batch_axis = caffe_pb2.ConcatParameter(axis=0)
    net.layer.append(_layer("data", "Concat", ["source_data", "target_data"], "data",
                            concat_param=batch_axis))
    net.layer.append(_layer("label", "Concat", ["source_label", "target_label"], "label",
                            concat_param=batch_axis))
    net.layer.extend(front_end_layers(arch, caffe_pb2.TRAIN))
    net.layer.append(_upsample(arch))
    net.layer.extend(_seg_loss())
    if category:
        split = caffe_pb2.SliceParameter(axis=0)
        split.slice_point.append(source.batch_size)
        net.layer.append(_layer("split_scores", "Slice", mil_scores,
                                [f"source_{mil_scores}", f"target_{mil_scores}"],
                                slice_param=split))
        net.layer.append(_layer(f"silence_source_{mil_scores}", "Silence",
                                f"source_{mil_scores}"))
        mil_param = caffe_pb2.ConstrainedMILParameter()
        if mil is not None:
            mil_param.CopyFrom(mil)
        mil_param.class_stats = class_stats
        bottoms = [f"target_{mil_scores}"] + (["target_image_labels"] if image_labels else [])
        net.layer.append(_layer("mil_loss", "ConstrainedMILLoss", bottoms, "mil_loss",
                                constrained_mil_param=mil_param))
    net.layer.extend(domain_classifier_layers(arch, normalization=domain_normalization))
    return net


CLASSIFIER_PREFIX = "dom_"


def domain_classifier_layers(arch: FrontEnd, features: str = "fc7",
                             normalization: int = caffe_pb2.LossParameter.NONE
                             ) -> list[caffe_pb2.LayerParameter]:
    """Pixel-level domain classifier on fc7 and its two losses (summed over all units)."""
    layers = [_layer("domain_label", "DomainLabel", [features, "source_data"], "domain_label")]
    current = features
    for i, width in enumerate(arch.domain_widths, start=1):
        name = f"{CLASSIFIER_PREFIX}fc{i}"
        layers.append(_conv(name, current, width))
        layers.append(_layer(f"{CLASSIFIER_PREFIX}relu{i}", "ReLU", name, name))
        current = name
        if arch.domain_dropout:
            drop = f"{CLASSIFIER_PREFIX}drop{i}"
            layers.append(_layer(drop, "Dropout", name, name, dropout_param=(
                caffe_pb2.DropoutParameter(dropout_ratio=arch.domain_dropout))))
    layers.append(_conv(f"{CLASSIFIER_PREFIX}score", current, 2, std=0.01))
    summed = caffe_pb2.LossParameter(normalization=normalization)
    invert = caffe_pb2.PowerParameter(scale=-1, shift=1)
    score = f"{CLASSIFIER_PREFIX}score"
    layers += [
        _layer("domain_label_inv", "Power", "domain_label", "domain_label_inv",
               power_param=invert),
        _layer("dom_loss", "SoftmaxWithLoss", [score, "domain_label"], "dom_loss",
               loss_param=summed),
        _layer("dom_loss_inv", "SoftmaxWithLoss", [score, "domain_label_inv"], "dom_loss_inv",
               loss_param=summed),
        _layer("dom_accuracy", "Accuracy", [score, "domain_label"], "dom_accuracy"),
    ]
    return layers


def classifier_layer_names(arch: FrontEnd) -> list[str]:
    return [f"{CLASSIFIER_PREFIX}fc{i}" for i in range(1, len(arch.domain_widths) + 1)] + \
        [f"{CLASSIFIER_PREFIX}score"]
