"""A pycaffe script that records a reference in the full layout with real Caffe.

``fcnwild compare --emit-caffe-script OUT.py`` writes it for a model, its weights
and its inputs; the user runs it where Caffe is installed and compares fcnwild with
the HDF5 file it writes (``fcnwild compare --reference``). The script runs under
Python 2 and 3 with BVLC Caffe's pycaffe (``Net.top_names``/``bottom_names``,
``blob_loss_weights``, ``_forward``/``_backward``).

It records what ``compare_with_reference`` drives the net with: the inputs, the
params as loaded, every blob after one forward, the params a forward changed
(BatchNorm statistics), every blob diff and param diff after one backward (from
the loss weights, or from random N(0, 1) diffs on the outputs of a net without a
loss, kept in ``top_diff/``) and, in the TRAIN phase, each Dropout layer's mask
(times 1 / (1 - ratio)), taken whole from a run of the layer on ones: recovered
as top/bottom it would be unknown where the bottom is 0, and the backward pass
needs it there when the bottom's producer passes a gradient at a zero output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

_SCRIPT = '''#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""Record a reference of {model_name} with Caffe, for `fcnwild compare`.

Written by `fcnwild compare --emit-caffe-script`. Run it where pycaffe imports:

    python {script_name} [OUTPUT.h5]

then compare fcnwild with what Caffe computed:

    fcnwild compare --model {model} {weights_flag}--phase {phase_name} --reference OUTPUT.h5
"""
from __future__ import print_function

import sys

import h5py
import numpy as np

import caffe

MODEL = {model!r}
WEIGHTS = {weights!r}
PHASE = caffe.{phase_constant}
INPUTS = {inputs!r}  # net input -> .npy file
OUTPUT = sys.argv[1] if len(sys.argv) > 1 else {output!r}
SEED = {seed}


def main():
    caffe.set_mode_cpu()
    caffe.set_random_seed(SEED)
    net = caffe.Net(MODEL, WEIGHTS, PHASE) if WEIGHTS else caffe.Net(MODEL, PHASE)
    names = list(net._layer_names)
    out = h5py.File(OUTPUT, "w")

    missing = [name for name in net.inputs if name not in INPUTS]
    unknown = [name for name in INPUTS if name not in net.inputs]
    if missing or unknown:
        sys.exit("give an array for every net input (%s); not an input: %s"
                 % (", ".join(net.inputs), ", ".join(unknown) or "-"))
    for name in net.inputs:
        value = np.load(INPUTS[name]).astype(np.float32)
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
        out["inputs/" + name] = value
    net.reshape()

    loaded = {{}}
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            loaded[layer, i] = blob.data.copy()
            out["params/%s/%d" % (layer, i)] = blob.data
            blob.diff[...] = 0

    # Forward, stopping at each TRAIN-phase Dropout to record its mask: the layer runs
    # on ones (its random draw does not depend on its input), then its top is made
    # bottom * mask, as the layer computes it.
    start = 0
    for i, layer in enumerate(net.layers):
        if layer.type != "Dropout" or PHASE != caffe.TRAIN:
            continue
        if i > start:
            net._forward(start, i - 1)
        bottom = net.blobs[net.bottom_names[names[i]][0]]
        top = net.blobs[net.top_names[names[i]][0]]
        values = bottom.data.copy()
        bottom.data[...] = 1
        net._forward(i, i)
        mask = top.data.copy()
        bottom.data[...] = values
        top.data[...] = values * mask
        out["aux/dropout_mask/" + names[i]] = mask
        start = i + 1
    if start < len(names):
        net._forward(start, len(names) - 1)
    for name, blob in net.blobs.items():
        out["forward/" + name] = blob.data
    for layer, blobs in net.params.items():
        if any((blob.data != loaded[layer, i]).any() for i, blob in enumerate(blobs)):
            for i, blob in enumerate(blobs):
                out["params_after_forward/%s/%d" % (layer, i)] = blob.data

    # Backward from the loss weights, or from random diffs on the outputs.
    if not any(net.blob_loss_weights.values()):
        rng = np.random.RandomState(SEED)
        for name in net.outputs:
            diff = rng.randn(*net.blobs[name].diff.shape).astype(np.float32)
            net.blobs[name].diff[...] = diff
            out["top_diff/" + name] = diff
    net._backward(len(names) - 1, 0)
    for name, blob in net.blobs.items():
        out["backward/" + name] = blob.diff
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            out["param_diffs/%s/%d" % (layer, i)] = blob.diff
    out.close()
    print("wrote", OUTPUT)


if __name__ == "__main__":
    main()
'''


def caffe_reference_script(model: Path, weights: Path | None, inputs: Mapping[str, Path],
                           phase: str, output: str, script_name: str, seed: int = 1701
                           ) -> str:
    """The script's text; paths are written as given (make them absolute first)."""
    phase_name = phase.lower()
    return _SCRIPT.format(
        model_name=Path(model).name, script_name=script_name, model=str(model),
        weights=None if weights is None else str(weights),
        weights_flag=f"--weights {weights} " if weights is not None else "",
        phase_name=phase_name, phase_constant=phase_name.upper(),
        inputs={name: str(path) for name, path in inputs.items()}, output=output, seed=seed)
