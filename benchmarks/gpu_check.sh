#!/bin/bash
# The GPU checks of the speed and precision issues, in one run on a lent GPU machine (the
# `device` tool), results under $OUT:
#   fixtures.log  the Caffe reference fixtures on CUDA, fp32 with TF32 off (the CPU tolerances);
#   bench.log / bench/results.json  benchmarks/bench_gpu.py: the front-end and GA+CA passes and
#                 the schedule's stages in fp32, tf32 and bf16 against same-run GEMM rates, the
#                 projected GPU-hours, and the 200-iteration bf16-vs-fp32 loss curve (2% bound);
#   bench_batch8.log  the front-end and GA+CA passes at 8 images per data layer (throughput).
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
python3 benchmarks/bench_gpu.py --steps 10 --loss-curve 200 --out "$OUT/bench" 2>&1 \
    | tee "$OUT/bench.log"
python3 benchmarks/bench_gpu.py --steps 10 --batch 8 --loss-curve 0 --precisions fp32 bf16 \
    --out "$OUT/bench_batch8" 2>&1 | tee "$OUT/bench_batch8.log"
