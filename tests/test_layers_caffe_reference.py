"""Every unit case of the Caffe reference fixtures, run layer by layer.

Each non-Input layer of the case's net is built from its LayerParameter, set
up on the recorded input shapes, loaded with Caffe's params and run forward on
Caffe's inputs; backward is seeded like Caffe's (loss weights or the recorded
random top diffs) and runs per layer on detached bottoms, as the Net drives
layers. Tops, params after forward, bottom diffs and param diffs are compared
with the case's tolerances. Cases about net assembly (implicit Split, one Input
with several tops) are the Net's tests.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from caffe_fixture import CaffeCase, case_names

from fcnwild.base import caffe_pb2
from fcnwild.layers.base import LayerContext
from fcnwild.layers.registry import layer_class

NET_LEVEL_CASES = {"split_implicit", "input_layer_multi_top"}
# Cases whose net needs feeding or writes a file: test_layers_data_caffe.py drives them.
DRIVEN_CASES = {"memory_data", "hdf5_output"}
UNIT_CASES = [n for n in case_names("unit") if n not in NET_LEVEL_CASES | DRIVEN_CASES]


def run_layers(case: CaffeCase, dtype: torch.dtype, device: str = "cpu"):
    """Forward and (if recorded) backward of the case's layers.

    Returns (layers, blobs, diffs): the built layers by name, every top by blob
    name, every diff by blob name (None when no backward was recorded).
    """
    blobs = {name: torch.from_numpy(a).to(device, dtype) for name, a in case.arrays("inputs").items()}
    params = case.layer_arrays("params")
    layers, records = {}, []
    for lp in case.net_param.layer:
        if lp.type == "Input":
            continue
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(lp)
        ctx = LayerContext(phase=case.phase, source=str(case.prototxt_path), base_dir=case.folder)
        layer = layer_class(lp.type)(param, ctx)
        bottom_shapes = [tuple(blobs[b].shape) for b in lp.bottom]
        layer.setup(bottom_shapes)
        top_shapes = layer.reshape(bottom_shapes)
        with torch.no_grad():
            for i, blob in enumerate(layer.blobs):
                blob.copy_(torch.from_numpy(params[lp.name][i]).reshape(blob.shape))
        layer.to(device, dtype)
        bottoms = [blobs[b].detach().requires_grad_(j not in layer.no_grad_bottoms)
                   for j, b in enumerate(lp.bottom)]
        tops = layer(*bottoms)
        assert isinstance(tops, tuple) and len(tops) == len(lp.top)
        for name, top, shape in zip(lp.top, tops, top_shapes):
            assert tuple(top.shape) == tuple(shape), f"{lp.name}: reshape() disagrees with forward"
            assert top.dtype == dtype and top.device.type == torch.device(device).type
            blobs[name] = top
        layers[lp.name] = layer
        records.append((lp, layer, bottoms, tops))

    if case.meta["backward"] is None:
        return layers, blobs, None
    diffs = {name: torch.full_like(blobs[name], w) for name, w in case.meta["loss_weights"].items()}
    diffs.update({name: torch.from_numpy(a).to(device, dtype)
                  for name, a in case.arrays("top_diff").items()})
    for lp, layer, bottoms, tops in reversed(records):
        outs = [(t, diffs[name].reshape(t.shape)) for name, t in zip(lp.top, tops)
                if name in diffs and t.requires_grad]
        wanted = [b for b in bottoms if b.requires_grad] + \
                 [p for p in layer.blobs if p.requires_grad]
        if not outs or not wanted:
            continue
        torch.autograd.backward([t for t, _ in outs], [g for _, g in outs], inputs=wanted)
        for name, bottom in zip(lp.bottom, bottoms):
            if bottom.grad is not None:
                diffs[name] = diffs[name] + bottom.grad if name in diffs else bottom.grad
    return layers, blobs, diffs


def check_case(name: str, dtype: torch.dtype, device: str = "cpu") -> None:
    """Run case ``name`` on ``device`` and assert every recorded array matches."""
    case = CaffeCase(name)
    layers, blobs, diffs = run_layers(case, dtype, device)

    produced = {top for lp in case.net_param.layer if lp.type != "Input" for top in lp.top}
    for blob_name, ref in case.arrays("forward").items():
        if blob_name in produced:
            case.assert_close(blobs[blob_name], ref, "forward", blob_name)
    for layer_name, refs in case.layer_arrays("params_after_forward").items():
        for i, ref in enumerate(refs):
            case.assert_close(layers[layer_name].blobs[i], ref, "forward",
                              f"{layer_name} blob {i} after forward")
    if diffs is None:
        return
    known = produced | set(case.arrays("inputs"))       # not Caffe's implicit Split blobs
    for blob_name, ref in case.arrays("backward").items():
        if blob_name not in known:
            continue
        ours = diffs.get(blob_name)
        case.assert_close(np.zeros_like(ref) if ours is None else ours, ref, "backward", blob_name)
    for layer_name, refs in case.layer_arrays("param_diffs").items():
        for i, ref in enumerate(refs):
            grad = layers[layer_name].blobs[i].grad
            case.assert_close(np.zeros_like(ref) if grad is None else grad, ref, "param_diffs",
                              f"{layer_name} param {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", UNIT_CASES)
def test_unit_case_matches_caffe(name: str, dtype: torch.dtype, device: str) -> None:
    check_case(name, dtype, device)


def test_every_unit_case_is_covered() -> None:
    """Net-level cases aside, no unit case may be silently dropped from the list above."""
    assert set(case_names("unit")) - set(UNIT_CASES) == NET_LEVEL_CASES | DRIVEN_CASES
    assert len(UNIT_CASES) >= 50


def test_bilinear_filler_reproduces_caffe_values() -> None:
    case = CaffeCase("deconv_bilinear_fcn")
    assert "up" in str(case.meta["params_kept_from_caffe_filler"])
    lp = next(lp for lp in case.net_param.layer if lp.name == "up")
    layer = layer_class(lp.type)(lp, LayerContext(phase=case.phase))
    layer.setup([tuple(case.arrays("inputs")["data"].shape)])
    ref = case.layer_arrays("params")["up"][0]
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy(), ref)
