#!/usr/bin/env bash
# On a fresh GPU machine: install the project, run the GPU kernel tests, then the whole GPU benchmark,
# all within TOTAL_S (default 540 s = 9 min). Writes benchmarks/results/<date>-<gpu>.json, the markdown
# table beside it (.md) and the kernel tests' log (-kernel-tests.txt). Commit all three.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TOTAL_S=${TOTAL_S:-540}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

$PY -m pip install -q --no-deps --no-build-isolation -e . || exit 1
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to run')" || exit 1
gpu=$($PY -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
stem=benchmarks/results/$(date -u +%F)-$gpu
mkdir -p benchmarks/results

echo "== GPU kernel tests (at most 180 s)"
timeout 180 $PY -m pytest tests/ -k "kernel or triton" -q -p no:cacheprovider 2>&1 | tee "$stem-kernel-tests.txt"
kernel_rc=${PIPESTATUS[0]}

left=$(( TOTAL_S - $(elapsed) - 15 ))
budget=$(( left - 60 ))  # no case starts after this; one in flight may still finish inside $left
echo "== GPU benchmarks (${left} s left, cases start until ${budget} s)"
timeout "$left" $PY -m pytest benchmarks/ --benchmark-only -m "not cpu_group" -q -p no:cacheprovider \
    --bench-out "$stem.json" --bench-budget-s "$budget" --benchmark-columns=median,min,rounds
bench_rc=$?

echo "== done in $(elapsed) s: kernel tests exit $kernel_rc, benchmarks exit $bench_rc"
echo "   $stem.json, $stem.md, $stem-kernel-tests.txt"
[ "$kernel_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
