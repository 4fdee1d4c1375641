#!/usr/bin/env bash
# The checks that need a GPU, in one short run: the GPU-only tests, then the throughput benchmark on the
# accelerator (bfloat16, cuDNN attention, MFU against the published peak). Results go to $OUT, or to
# ./accelerator_results when OUT is unset. Run from the repository root, with JAX for CUDA, Flax, Optax,
# Orbax, PyTorch, rich, PyYAML and pytest installed; the project itself need not be installed. BENCH_ARGS
# adds options to the benchmark, e.g. BENCH_ARGS="--no-compile" to skip torch.compile.
set -euo pipefail

out="${OUT:-accelerator_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" || true
tests=0  # the benchmark runs even when a test fails; the exit status reports the tests
python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_accelerators.py 2>&1 \
    | tee "$out/pytest.log" || tests=$?
python3 benchmarks/train_throughput.py --json --repeats 3 ${BENCH_ARGS:-} > "$out/train_throughput.json"
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['machine'], r['mfu_peak_source']); \
[print(row['d_model'], row['tokens_per_s'], row['mfu'], row.get('ratio_vs_torch_eager')) for row in r['sizes']]" \
    "$out/train_throughput.json"
exit "$tests"
