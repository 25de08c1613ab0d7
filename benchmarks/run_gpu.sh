#!/usr/bin/env bash
# On a fresh GPU machine: install the project, run the GPU tests, then the whole GPU benchmark, all within
# TOTAL_S (default 540 s = 9 min). Writes benchmarks/results/<date>-<gpu>.json, the markdown table beside it
# (.md) and the GPU tests' log (-kernel-tests.txt). Commit all three.
#
# Needs only what the lent machine's image has: torch, triton, numpy, pytest, pytest-benchmark, hypothesis,
# nvidia-ml-py (no soundfile, no soxr, no network: the install takes no dependencies).
# `run_gpu.sh --collect-only` imports and collects what a run would, on any machine, and exits
# (tests/test_run_gpu.py runs it with soundfile and soxr unimportable).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TOTAL_S=${TOTAL_S:-540}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

# The test files of a GPU run, the only place they are listed: kernels, the Triton model, the recurrence op,
# the graphed training step and, last (the slowest, and it needs no GPU), the sm_90 compile. The others
# import soundfile (vrnn_fast.data).
shopt -s nullglob
GPU_TESTS=(tests/test_kernels_*.py tests/test_triton_model.py tests/test_recurrence*.py tests/test_graphs.py
           tests/test_sm90_compile.py tests/test_loader_cuda.py)
BENCH=(benchmarks/ --benchmark-only -m "not cpu_group" -q -p no:cacheprovider)

if [ "${1:-}" = --collect-only ]; then
    $PY -m pytest --collect-only -q -p no:cacheprovider "${GPU_TESTS[@]}" || exit 1
    exec $PY -m pytest --collect-only "${BENCH[@]}"
fi

$PY -m pip install -q --no-deps --no-build-isolation -e . || exit 1
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to run')" || exit 1
gpu=$($PY -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
stem=benchmarks/results/$(date -u +%F)-$gpu
mkdir -p benchmarks/results

echo "== GPU tests (at most 180 s): ${GPU_TESTS[*]}"
timeout 180 $PY -m pytest -q -p no:cacheprovider "${GPU_TESTS[@]}" 2>&1 | tee "$stem-kernel-tests.txt"
kernel_rc=${PIPESTATUS[0]}

left=$(( TOTAL_S - $(elapsed) - 15 ))
budget=$(( left - 60 ))  # no case starts after this; one in flight may still finish inside $left
echo "== GPU benchmarks (${left} s left, cases start until ${budget} s)"
timeout "$left" $PY -m pytest "${BENCH[@]}" --bench-out "$stem.json" --bench-budget-s "$budget" \
    --benchmark-columns=median,min,rounds
bench_rc=$?

echo "== done in $(elapsed) s: GPU tests exit $kernel_rc, benchmarks exit $bench_rc"
echo "   $stem.json, $stem.md, $stem-kernel-tests.txt"
[ "$kernel_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
