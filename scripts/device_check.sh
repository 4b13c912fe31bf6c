#!/bin/bash
# The GPU check as one prepared run (an H200 machine with PyTorch but without Ray, MLflow or Optuna):
#   wheels of Ray (its Java jars, RLlib, Serve and LLM left out: 44 MB), jsonschema and pydantic in .whl/, then
#   1. the CUDA tests (tests/trainables/test_cuda.py and the semi-structured export test),
#   2. benchmarks.gpu: population training together vs one by one (fp32 and bf16), matrix throughput,
#      fractional packing through Ray Tune (gpu 0.25 vs 1),
#   3. benchmarks.semistructured: dense vs 2:4 semi-structured float16 inference, and the 2:4 export on the GPU.
# Each step's log lands in $OUT (or ./device-out); a failing step does not stop the others.
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT/install.log" 2>&1 && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: rc=$? in $((SECONDS - t0)) s"; tail -n 25 "$OUT/$name.log"
}
nvidia-smi -L; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
step tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/trainables/test_cuda.py \
    tests/trainables/test_semistructured.py
step semistructured 120 python3 -m benchmarks.semistructured --out "$OUT/RESULTS_SEMISTRUCTURED.md"
step gpu 240 python3 -m benchmarks.gpu --members 64,256 --bf16 --trials 8 --out "$OUT/RESULTS_GPU.md"
exit 0
