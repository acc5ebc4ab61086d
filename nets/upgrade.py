"""Format upgrades, in Caffe's order (upgrade_proto.cpp):
V0 -> V1 layers, legacy data-transformation fields, V1 -> V2 layers, legacy
``input``/``input_shape``/``input_dim`` -> an Input layer, BatchNorm param
specs; and the solver's V1 ``solver_type`` enum -> ``type`` string.

Where Caffe logs an error and carries on with a partial upgrade, we raise a
PrototxtError: a silently half-upgraded net is worse than a clear stop.
"""
from __future__ import annotations

import os

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import PrototxtError

PathLike = str | os.PathLike
V1 = caffe_pb2.V1LayerParameter

# V0 lower-case type strings -> V1 enum (UpgradeV0LayerType).
_V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V1 enum -> V2 type string (UpgradeV1LayerType).
_V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V0 field -> {v0 type: (V1 sub-message, field)}; a V0 field set on any other type is an error.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
# V0 fields that moved to transform_param whatever the layer type.
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                 "mirror": "mirror"}
_V0_POOL = {caffe_pb2.V0LayerParameter.MAX: caffe_pb2.PoolingParameter.MAX,
            caffe_pb2.V0LayerParameter.AVE: caffe_pb2.PoolingParameter.AVE,
            caffe_pb2.V0LayerParameter.STOCHASTIC: caffe_pb2.PoolingParameter.STOCHASTIC}
# Layers whose legacy transformation fields sit in their own *_param.
_DATA_TRANSFORM_LAYERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                          V1.WINDOW_DATA: "window_data_param"}


def upgrade_net(param: caffe_pb2.NetParameter, *, file: PathLike | None = None
                ) -> caffe_pb2.NetParameter:
    """Return ``param`` upgraded to the current format (a new message)."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    if any(layer.HasField("layer") for layer in net.layers):
        net = _upgrade_v0(net, file)
    _upgrade_data_transformation(net)
    if len(net.layers):
        net = _upgrade_v1(net, file)
    if len(net.input):
        _upgrade_input(net, file)
    _upgrade_batchnorm(net)
    return net


# --- V0 -> V1 ---------------------------------------------------------------------------
def _upgrade_v0(v0: caffe_pb2.NetParameter, file: PathLike | None) -> caffe_pb2.NetParameter:
    padded = _merge_padding_layers(v0, file)
    net = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        net.name = padded.name
    for connection in padded.layers:
        _upgrade_v0_layer(connection, net.layers.add(), file)
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return net


def _merge_padding_layers(param: caffe_pb2.NetParameter, file: PathLike | None
                          ) -> caffe_pb2.NetParameter:
    """V0 had separate "padding" layers; fold each into the conv/pool layer it feeds."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    last_top = {name: -1 for name in param.input}
    for i, connection in enumerate(param.layers):
        v0 = connection.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                raise PrototxtError(f"V0 layer '{v0.name}': unknown bottom blob '{blob}'",
                                    file=file, layer=v0.name)
            source_idx = last_top[blob]
            if source_idx == -1:
                continue
            source = param.layers[source_idx]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool") or len(connection.bottom) != 1 \
                        or len(source.bottom) != 1 or len(source.top) != 1:
                    raise PrototxtError(
                        "a V0 padding layer may only feed a single-input conv or pool layer "
                        f"(found type '{v0.type}')", file=file, layer=v0.name)
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = source.layer.pad
                target.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(connection: caffe_pb2.V1LayerParameter,
                      out: caffe_pb2.V1LayerParameter, file: PathLike | None) -> None:
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in _V0_TYPES:
            raise PrototxtError(f"unknown V0 layer type '{kind}'", file=file, layer=v0.name)
        out.type = _V0_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        if kind not in targets:
            raise PrototxtError(f"V0 parameter '{field}' is not valid for layer type '{kind}'",
                                file=file, layer=v0.name)
        sub_name, sub_field = targets[kind]
        value = getattr(v0, field)
        sub = getattr(out, sub_name)
        if sub_field is None:
            sub.CopyFrom(value)
        elif sub.DESCRIPTOR.fields_by_name[sub_field].is_repeated:
            getattr(sub, sub_field).append(value)
        elif hasattr(value, "CopyFrom"):
            getattr(sub, sub_field).CopyFrom(value)
        else:
            setattr(sub, sub_field, value)
    if v0.HasField("pool"):
        if kind != "pool":
            raise PrototxtError(f"V0 parameter 'pool' is not valid for layer type '{kind}'",
                                file=file, layer=v0.name)
        out.pooling_param.pool = _V0_POOL[v0.pool]
    for field, target in _V0_TRANSFORM.items():
        if v0.HasField(field):
            setattr(out.transform_param, target, getattr(v0, field))


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    for layer in net.layers:
        sub_name = _DATA_TRANSFORM_LAYERS.get(layer.type)
        if sub_name is None or not layer.HasField(sub_name):
            continue
        sub = getattr(layer, sub_name)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if sub.HasField(field):
                setattr(layer.transform_param, field, getattr(sub, field))
                sub.ClearField(field)


# --- V1 -> V2 ---------------------------------------------------------------------------
def _upgrade_v1(v1: caffe_pb2.NetParameter, file: PathLike | None) -> caffe_pb2.NetParameter:
    if len(v1.layer):
        raise PrototxtError("the net mixes V1 'layers' and V2 'layer' entries; "
                            "expected only one of them", file=file)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(v1)
    net.ClearField("layers")
    for old in v1.layers:
        _upgrade_v1_layer(old, net.layer.add(), file)
    return net


def _upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, new: caffe_pb2.LayerParameter,
                      file: PathLike | None) -> None:
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    if old.HasField("name"):
        new.name = old.name
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    if old.HasField("type"):
        if old.type not in _V1_TYPES:
            raise PrototxtError(f"unknown V1 layer type enum {old.type}", file=file,
                                layer=old.name)
        new.type = _V1_TYPES[old.type]
    new.blobs.extend(old.blobs)

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(new.param) <= i:
            new.param.add()
        return new.param[i]

    for i, name in enumerate(old.param):
        spec(i).name = name
    for i, mode in enumerate(old.blob_share_mode):
        spec(i).share_mode = mode  # STRICT/PERMISSIVE share their numbers
    for i, lr in enumerate(old.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(old.weight_decay):
        spec(i).decay_mult = decay
    new.loss_weight.extend(old.loss_weight)
    for field, value in old.ListFields():
        if field.name.endswith("_param") and field.name in new.DESCRIPTOR.fields_by_name:
            getattr(new, field.name).CopyFrom(value)
    if old.HasField("layer"):
        raise PrototxtError("V1 layer still holds a V0 'layer' entry", file=file, layer=old.name)


# --- legacy inputs and BatchNorm --------------------------------------------------------
def _upgrade_input(net: caffe_pb2.NetParameter, file: PathLike | None) -> None:
    """``input:`` + ``input_shape``/``input_dim`` -> one Input layer named "input", first."""
    names = list(net.input)
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape and len(net.input_shape) != len(names):
        raise PrototxtError(f"{len(names)} 'input' entries but {len(net.input_shape)} "
                            "'input_shape' entries; expected one shape per input", file=file)
    if has_dim and not has_shape and len(net.input_dim) != 4 * len(names):
        raise PrototxtError(f"{len(names)} 'input' entries need {4 * len(names)} 'input_dim' "
                            f"values (4 per input), found {len(net.input_dim)}", file=file)
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(names):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = [layer] + list(net.layer)
        del net.layer[:]
        net.layer.extend(layers)
    # An input without shape is a legacy caffemodel's leftover: dropping it is enough.
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def _upgrade_batchnorm(net: caffe_pb2.NetParameter) -> None:
    """Old BatchNorm definitions declared 3 param specs; Caffe forces them to lr/decay 0."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# --- solver -------------------------------------------------------------------------------
_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


def upgrade_solver(param: caffe_pb2.SolverParameter, *, file: PathLike | None = None
                   ) -> caffe_pb2.SolverParameter:
    """V1 ``solver_type`` enum -> ``type`` string (UpgradeSolverType)."""
    if not param.HasField("solver_type"):
        return param
    if param.HasField("type"):
        raise PrototxtError("both the old 'solver_type' enum and the new 'type' string are "
                            "set; expected only one", file=file)
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    out.type = _SOLVER_TYPES[param.solver_type]
    out.ClearField("solver_type")
    return out
