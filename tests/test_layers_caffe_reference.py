"""Every unit case of the Caffe reference fixtures, run layer by layer.

Each non-Input layer of the case's net is built from its LayerParameter, set
up on the recorded input shapes, loaded with Caffe's params and run forward on
Caffe's inputs (a MemoryData layer gets the case's ``aux/memory_data`` arrays);
backward is seeded like Caffe's (loss weights or the recorded random top diffs)
and runs per layer on detached bottoms, as the Net drives layers; the further
forward calls of ``forward_calls/<k>`` follow on the same layers. Tops, params
after forward, bottom diffs and param diffs are compared with the case's
tolerances. Each case runs in a scratch working directory holding copies of its
files (``case_workdir``), as Caffe ran it in the case folder. Cases about net
assembly (implicit Split, one Input with several tops) are the Net's tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_fixture import CaffeCase, case_names

from fcnwild.base import caffe_pb2
from fcnwild.layers.base import Layer, LayerContext
from fcnwild.layers.registry import layer_class
from fcnwild.nets.reference import case_workdir

NET_LEVEL_CASES = {"split_implicit", "input_layer_multi_top"}
UNIT_CASES = [n for n in case_names("unit") if n not in NET_LEVEL_CASES]

Built = list[tuple[caffe_pb2.LayerParameter, Layer]]


def build_layers(case: CaffeCase, dtype: torch.dtype, device: str) -> Built:
    """The case's non-Input layers, set up on the recorded shapes, with Caffe's params."""
    shapes = {name: tuple(a.shape) for name, a in case.arrays("inputs").items()}
    params = case.layer_arrays("params")
    built = []
    for lp in case.net_param.layer:
        if lp.type == "Input":
            continue
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(lp)
        ctx = LayerContext(phase=case.phase, source=str(case.prototxt_path), base_dir=case.folder)
        layer = layer_class(lp.type)(param, ctx)
        bottom_shapes = [shapes[b] for b in lp.bottom]
        layer.setup(bottom_shapes)
        shapes.update(zip(lp.top, layer.reshape(bottom_shapes)))
        with torch.no_grad():
            for i, blob in enumerate(layer.blobs):
                blob.copy_(torch.from_numpy(params[lp.name][i]).reshape(blob.shape))
        layer.to(device, dtype)
        built.append((lp, layer))
    memory = case.arrays("aux/memory_data")
    for lp, layer in built:
        if lp.type == "MemoryData":
            layer.set_input_arrays(memory["data"], memory["labels"])
    return built


def forward_layers(built: Built, inputs: dict[str, torch.Tensor], dtype: torch.dtype,
                   device: str, force_backward: bool) -> tuple[dict[str, torch.Tensor], list]:
    """One forward of every layer; returns every top by blob name and the per-layer
    (param, layer, bottoms, tops) records backward needs. As in Caffe, the inputs get
    diffs only under force_backward, other blobs when a param or input is upstream."""
    blobs, records = dict(inputs), []
    needs = {name: force_backward for name in inputs}
    for lp, layer in built:
        bottoms = [blobs[b].detach().requires_grad_(j not in layer.no_grad_bottoms and needs[b])
                   for j, b in enumerate(lp.bottom)]
        needs.update(dict.fromkeys(lp.top, any(b.requires_grad for b in bottoms) or
                                   any(p.requires_grad for p in layer.blobs)))
        tops = layer(*bottoms)
        assert isinstance(tops, tuple) and len(tops) == len(lp.top)
        # Checked after the forward: Filter's tops take the selected count then, as in
        # Caffe. Data layers (no bottoms) may reshape their tops at forward, as Caffe's do.
        if bottoms:
            top_shapes = layer.reshape([tuple(b.shape) for b in bottoms])
            assert [tuple(t.shape) for t in tops] == [tuple(s) for s in top_shapes], \
                f"{lp.name}: reshape() disagrees with forward"
        for name, top in zip(lp.top, tops):
            assert top.dtype == dtype and top.device.type == torch.device(device).type
            blobs[name] = top
        records.append((lp, layer, bottoms, tops))
    return blobs, records


def backward_layers(case: CaffeCase, blobs: dict[str, torch.Tensor], records: list,
                    dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Backward seeded like Caffe's; returns every diff by blob name."""
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
    return diffs


def run_layers(case: CaffeCase, dtype: torch.dtype, device: str = "cpu"):
    """Forward, backward (if recorded) and the further forward calls of the case's layers.

    Returns (layers, calls, diffs): the built layers by name, the blobs of each forward
    call, every diff by blob name (None when no backward was recorded).
    """
    inputs = {name: torch.from_numpy(a).to(device, dtype)
              for name, a in case.arrays("inputs").items()}
    built = build_layers(case, dtype, device)
    force = case.net_param.force_backward
    blobs, records = forward_layers(built, inputs, dtype, device, force)
    diffs = None
    if case.meta["backward"] is not None:
        diffs = backward_layers(case, blobs, records, dtype, device)
    calls = [blobs]
    for _ in range(1, case.meta.get("forward_calls", 1)):
        calls.append(forward_layers(built, inputs, dtype, device, force)[0])
    return {lp.name: layer for lp, layer in built}, calls, diffs


def check_case(name: str, dtype: torch.dtype, device: str = "cpu",
               workdir: Path | None = None) -> None:
    """Run case ``name`` on ``device`` and assert every recorded array matches."""
    case = CaffeCase(name)
    with case_workdir(case.folder / "blobs.h5", workdir):
        layers, calls, diffs = run_layers(case, dtype, device)

    produced = {top for lp in case.net_param.layer if lp.type != "Input" for top in lp.top}
    for call, blobs in enumerate(calls):
        group = "forward" if call == 0 else f"forward_calls/{call}"
        for blob_name, ref in case.arrays(group).items():
            if blob_name in produced:
                case.assert_close(blobs[blob_name], ref, "forward", f"{group}/{blob_name}")
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
def test_unit_case_matches_caffe(name: str, dtype: torch.dtype, device: str,
                                 tmp_path: Path) -> None:
    check_case(name, dtype, device, tmp_path)


def test_every_unit_case_is_covered() -> None:
    """Net-level cases aside, no unit case may be silently dropped from the list above."""
    assert set(case_names("unit")) - set(UNIT_CASES) == NET_LEVEL_CASES
    assert len(UNIT_CASES) >= 50


def test_bilinear_filler_reproduces_caffe_values() -> None:
    case = CaffeCase("deconv_bilinear_fcn")
    assert "up" in str(case.meta["params_kept_from_caffe_filler"])
    lp = next(lp for lp in case.net_param.layer if lp.name == "up")
    layer = layer_class(lp.type)(lp, LayerContext(phase=case.phase))
    layer.setup([tuple(case.arrays("inputs")["data"].shape)])
    ref = case.layer_arrays("params")["up"][0]
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy(), ref)
