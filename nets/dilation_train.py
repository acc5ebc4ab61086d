"""The training nets and solver fyu/dilation's ``train.py`` writes, as NetParameter data.

``train.py`` (fyu/dilation, with ``network.py``) builds them with pycaffe's
NetSpec and runs fyu/caffe-dilation's ``caffe train``; here they are written
field for field, so fcnwild trains what a caffe-dilation user trained:

- ``frontend`` (files ``frontend_vgg_*``): ImageLabelData (crop 500 with a
  186-pixel margin, label_slice dim (crop - 372) / 8, stride 8, offset 186;
  REFLECT padding; shuffled; mirrored in the train net only) -> the dilated
  VGG-16 front-end (no padding, pool4/pool5 removed, conv5 dilation 2, fc6 7x7
  dilation 4, dropout 0.5, ``final`` 1x1 with N(0, 0.001) weights; the other
  layers keep caffe's constant-0 default fillers: train.py requires ``--weights``)
  -> SoftmaxWithLoss (ignore 255, VALID) [+ Accuracy in the test net];
- ``context``: BinLabelData (the front-end's ``--bin`` features; shuffled,
  mirrored by the layer's default; label_slice dim = ``--label_shape``, stride 8)
  -> the context module (2 + (layers - 4) dilated 3x3 convs with dilation
  2^(i-1), ctx_fc1 3x3, ctx_final 1x1, every one ``identity``-initialised with
  std 0.01) -> the same loss [+ Accuracy].

``--up`` inserts a fixed bilinear x8 Deconvolution before the loss and sets
the label stride to 1, which only the context net's label_slice uses:
network.py derives the front-end's label from stride 8 whatever it is given,
so train.py's ``frontend --up`` net pairs 8x upsampled scores with a stride-8
label and neither caffe-dilation nor fcnwild can build it.

``write_training_files`` writes the three files as train.py does; ``fcnwild
dilation-train`` takes train.py's options and prints the ``fcnwild train``
command that replaces its ``caffe train`` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import NetError
from fcnwild.nets.frontend import _layer, _learned
from fcnwild.nets.prototxt import write_text

MARGIN = 186             # context the front-end loses on each side of its input
PASCAL_MEAN_BGR = (102.93, 111.36, 116.52)    # train.py's default --mean
MODELS = ("frontend", "context")


@dataclass(frozen=True)
class TrainOptions:
    """train.py's command-line options that shape its files (its names and defaults)."""
    model: str
    classes: int
    train_image: str
    train_label: str
    test_image: str = ""
    test_label: str = ""
    train_batch: int = 8
    test_batch: int = 2          # 0: no test net
    crop_size: int = 500
    mean: tuple[float, ...] = PASCAL_MEAN_BGR
    lr: float = 0.0              # 0: the model's default (front-end 1e-4, context 1e-3)
    momentum: float = 0.9
    up: bool = False
    layers: int = 8
    label_shape: tuple[int, ...] | None = None
    iter_size: int = 1
    # fcnwild only: the front-end's widths (train.py: VGG-16's), for nets that run in seconds.
    block_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc_width: int = 4096

    def __post_init__(self) -> None:
        """train.py's own checks (process_options), as errors instead of asserts."""
        if self.model not in MODELS:
            raise NetError(f"model {self.model!r}: train.py builds one of {MODELS}")
        if (self.crop_size - 2 * MARGIN) % 8 or self.crop_size <= 2 * MARGIN:
            raise NetError(f"crop_size {self.crop_size}: the crop must exceed {2 * MARGIN} by "
                           "a positive multiple of 8 (the front-end's margin and stride)")
        if len(self.mean) != 3:
            raise NetError(f"mean has {len(self.mean)} values; give B, G, R")
        if self.model == "context" and (self.label_shape is None or
                                        len(self.label_shape) != 2):
            raise NetError("the context net needs label_shape: the height and width of the "
                           "label maps the loss compares with")

    @property
    def label_stride(self) -> int:
        return 1 if self.up else 8

    @property
    def file_stem(self) -> str:
        return "frontend_vgg" if self.model == "frontend" else self.model

    @property
    def base_lr(self) -> float:
        return self.lr or {"frontend": 1e-4, "context": 1e-3}[self.model]


# --------------------------------------------------------------------------- data layers
def _label_slice(dim, stride: int, offset: int | None = None) -> caffe_pb2.Slice:
    grid = caffe_pb2.Slice(dim=list(dim), stride=[stride, stride])
    if offset is not None:
        grid.offset.extend([offset, offset])
    return grid


def image_label_data_layer(image_list: str, label_list: str, batch_size: int, mirror: bool,
                           crop_size: int, mean, *, label_stride: int, margin: int = MARGIN,
                           shuffle: bool = True) -> caffe_pb2.LayerParameter:
    """network.make_image_label_data's layer: a crop_size crop with a ``margin`` border,
    the label sampled every ``label_stride`` pixels inside the margin."""
    dim = (crop_size - 2 * margin) // label_stride
    transform = caffe_pb2.TransformationParameter(mirror=mirror, crop_size=crop_size,
                                                  mean_value=list(mean))
    param = caffe_pb2.ImageLabelDataParameter(
        image_list_path=image_list, label_list_path=label_list, shuffle=shuffle,
        batch_size=batch_size, padding=caffe_pb2.ImageLabelDataParameter.REFLECT,
        label_slice=_label_slice((dim, dim), label_stride, margin))
    return _layer("data", "ImageLabelData", top=["data", "label"], transform_param=transform,
                  image_label_data_param=param)


def bin_label_data_layer(bin_list: str, label_list: str, batch_size: int, label_shape,
                         label_stride: int) -> caffe_pb2.LayerParameter:
    """network.make_bin_label_data."""
    param = caffe_pb2.BinLabelDataParameter(
        bin_list_path=bin_list, label_list_path=label_list, shuffle=True,
        batch_size=batch_size, label_slice=_label_slice(label_shape, label_stride))
    return _layer("data", "BinLabelData", top=["data", "label"], bin_label_data_param=param)


# --------------------------------------------------------------------------- bodies
def _conv(name: str, bottom: str, outputs: int, kernel: int, *, dilation: int = 0,
          pad: int = 0, weight_filler: caffe_pb2.FillerParameter | None = None,
          bias_filler: caffe_pb2.FillerParameter | None = None) -> caffe_pb2.LayerParameter:
    param = caffe_pb2.ConvolutionParameter(num_output=outputs, kernel_size=[kernel])
    if pad:
        param.pad.append(pad)
    if dilation:
        param.dilation.append(dilation)
    if weight_filler is not None:
        param.weight_filler.CopyFrom(weight_filler)
    if bias_filler is not None:
        param.bias_filler.CopyFrom(bias_filler)
    return _layer(name, "Convolution", bottom, name, param=_learned(), convolution_param=param)


def _relu(name: str, blob: str) -> caffe_pb2.LayerParameter:
    return _layer(name, "ReLU", blob, blob)


def frontend_vgg_layers(classes: int, bottom: str = "data",
                        widths: tuple[int, ...] = (64, 128, 256, 512, 512),
                        fc_width: int = 4096) -> list[caffe_pb2.LayerParameter]:
    """network.build_frontend_vgg: conv1_1 ... fc7 (in-place ReLU and Dropout), ``final``."""
    depths, dilations = (2, 2, 3, 3, 3), (0, 0, 0, 0, 2, 4)
    layers, current = [], bottom
    for block, (width, depth) in enumerate(zip(widths, depths), start=1):
        for i in range(1, depth + 1):
            name = f"conv{block}_{i}"
            layers += [_conv(name, current, width, 3, dilation=dilations[block - 1]),
                       _relu(f"relu{block}_{i}", name)]
            current = name
        if not dilations[block]:
            pool = caffe_pb2.PoolingParameter(pool=caffe_pb2.PoolingParameter.MAX,
                                              kernel_size=2, stride=2)
            layers.append(_layer(f"pool{block}", "Pooling", current, f"pool{block}",
                                 pooling_param=pool))
            current = f"pool{block}"
    for name, kernel, dilation in (("fc6", 7, dilations[5]), ("fc7", 1, 0)):
        layers += [_conv(name, current, fc_width, kernel, dilation=dilation),
                   _relu(f"relu{name[2:]}", name),
                   _layer(f"drop{name[2:]}", "Dropout", name, name,
                          dropout_param=caffe_pb2.DropoutParameter(dropout_ratio=0.5))]
        current = name
    layers.append(_conv("final", current, classes, 1,
                        weight_filler=caffe_pb2.FillerParameter(type="gaussian", std=0.001),
                        bias_filler=caffe_pb2.FillerParameter(type="constant", value=0)))
    return layers


def context_layers(classes: int, bottom: str = "data", layers: int = 8
                   ) -> list[caffe_pb2.LayerParameter]:
    """network.build_context: the basic context module, identity-initialised."""
    identity = caffe_pb2.FillerParameter(type="identity", num_groups=classes, std=0.01)
    zero = caffe_pb2.FillerParameter(type="constant", value=0)
    specs = [("ctx_conv1_1", "ctx_relu1_1", 1), ("ctx_conv1_2", "ctx_relu1_2", 1)]
    specs += [(f"ctx_conv{i}_1", f"ctx_relu{i}_1", 2 ** (i - 1)) for i in range(2, layers - 2)]
    specs.append(("ctx_fc1", "ctx_fc1_relu", 1))
    result, current = [], bottom
    for name, relu, dilation in specs:
        result += [_conv(name, current, classes, 3, dilation=dilation if dilation > 1 else 0,
                         pad=dilation, weight_filler=identity, bias_filler=zero),
                   _relu(relu, name)]
        current = name
    result.append(_conv("ctx_final", current, classes, 1, weight_filler=identity,
                        bias_filler=zero))
    return result


def upsample_layer(bottom: str, classes: int) -> caffe_pb2.LayerParameter:
    """network.make_upsample: fixed bilinear x8 (kernel 16, stride 8, pad 4, per class)."""
    param = caffe_pb2.ConvolutionParameter(
        bias_term=False, num_output=classes, kernel_size=[16], stride=[8], group=classes,
        pad=[4], weight_filler=caffe_pb2.FillerParameter(type="bilinear"))
    return _layer("upsample", "Deconvolution", bottom, "upsample",
                  param=[caffe_pb2.ParamSpec(lr_mult=0, decay_mult=0)],
                  convolution_param=param)


def loss_layers(scores: str, with_accuracy: bool) -> list[caffe_pb2.LayerParameter]:
    """network.make_softmax_loss [+ make_accuracy]."""
    loss = caffe_pb2.LossParameter(ignore_label=255,
                                   normalization=caffe_pb2.LossParameter.VALID)
    layers = [_layer("loss", "SoftmaxWithLoss", [scores, "label"], "loss", loss_param=loss)]
    if with_accuracy:
        layers.append(_layer("accuracy", "Accuracy", [scores, "label"], "accuracy",
                             accuracy_param=caffe_pb2.AccuracyParameter(ignore_label=255)))
    return layers


# --------------------------------------------------------------------------- nets, solver
def make_net(options: TrainOptions, is_training: bool) -> caffe_pb2.NetParameter:
    """train.py's make_frontend_vgg / make_context for the train or the test net."""
    o = options
    batch = o.train_batch if is_training else o.test_batch
    images = o.train_image if is_training else o.test_image
    labels = o.train_label if is_training else o.test_label
    net = caffe_pb2.NetParameter()
    if o.model == "frontend":
        # network.py samples the front-end's label at stride 8 whatever train.py asks for.
        net.layer.append(image_label_data_layer(images, labels, batch, is_training,
                                                o.crop_size, o.mean, label_stride=8))
        net.layer.extend(frontend_vgg_layers(o.classes, widths=o.block_widths,
                                             fc_width=o.fc_width))
        scores = "final"
    else:
        net.layer.append(bin_label_data_layer(images, labels, batch, o.label_shape,
                                              o.label_stride))
        net.layer.extend(context_layers(o.classes, layers=o.layers))
        scores = "ctx_final"
    if o.up:
        net.layer.append(upsample_layer(scores, o.classes))
        scores = "upsample"
    net.layer.extend(loss_layers(scores, with_accuracy=not is_training))
    return net


def make_solver(options: TrainOptions, train_net: str, test_net: str | None,
                snapshot_prefix: str) -> caffe_pb2.SolverParameter:
    """train.py's make_solver."""
    solver = caffe_pb2.SolverParameter(
        train_net=train_net, test_interval=100, base_lr=options.base_lr, lr_policy="step",
        gamma=0.1, stepsize=100000, display=5, max_iter=400000,
        momentum=options.momentum or 0.9, weight_decay=0.0005, regularization_type="L2",
        snapshot=2000, solver_mode=caffe_pb2.SolverParameter.GPU,
        iter_size=options.iter_size, snapshot_format=caffe_pb2.SolverParameter.BINARYPROTO,
        type="SGD", snapshot_prefix=snapshot_prefix)
    if test_net is not None:
        solver.test_net.append(test_net)
        solver.test_iter.append(50)
    return solver


def write_training_files(options: TrainOptions, work_dir: str | Path) -> dict[str, Path]:
    """What train.py writes into ``work_dir``: ``<model>_train_net.txt``,
    ``<model>_test_net.txt`` (unless test_batch is 0), ``<model>_solver.txt``; snapshots
    go to ``work_dir/snapshots/<model>``. Paths inside are ``work_dir``-joined, as there."""
    work_dir = Path(work_dir)
    stem = options.file_stem
    paths = {"train_net": work_dir / f"{stem}_train_net.txt",
             "solver": work_dir / f"{stem}_solver.txt"}
    if options.test_batch > 0:
        paths["test_net"] = work_dir / f"{stem}_test_net.txt"
    (work_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    write_text(paths["train_net"], make_net(options, True))
    if "test_net" in paths:
        write_text(paths["test_net"], make_net(options, False))
    write_text(paths["solver"], make_solver(
        options, str(paths["train_net"]),
        str(paths["test_net"]) if "test_net" in paths else None,
        str(work_dir / "snapshots" / stem)))
    return paths
