#!/bin/bash
# The speed issue's GPU checks, in one run on a lent GPU machine (the `device` tool):
# the Caffe reference fixtures on CUDA (TF32 off, the CPU tolerances), then the
# front-end train-step benchmark at batch 8, crop 500, fp32 and bf16 autocast.
# That machine has torch but not this project's protobuf: wheels travel in .whl/.
set -o pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# The fcnwild namespace without installing: link the user's top-level folders into it.
mkdir -p /tmp/ns/fcnwild
for p in base layers nets solvers data tools; do ln -sfn "$PWD/$p" /tmp/ns/fcnwild/$p; done
export PYTHONPATH=/tmp/ns${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
FCNWILD_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
    tests/test_layers_caffe_reference.py tests/test_nets_caffe_reference.py \
    tests/test_solvers_caffe.py 2>&1 | tee "$OUT/fixtures.log" | tail -25
(cd benchmarks && python3 bench_gpu.py --batch 8 --crop 500 --steps 10) 2>&1 | tee "$OUT/bench.log"
