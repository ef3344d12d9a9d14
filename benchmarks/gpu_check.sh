#!/usr/bin/env bash
# The GPU paths of the engine in one short run (at most 9.5 minutes; each step has its own timeout): the CUDA tests,
# every backend per batch bucket, then bench items 1, 4 and 8 on CUDA. From the repo root, after
# `source .devicekit/env.sh` on a bare GPU host (../shared/device/README.md). Results go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
timeout 120 python -m pytest -q -rs tests/streamer/test_streamer_embedders.py > "$out/pytest.txt" 2>&1
tail -5 "$out/pytest.txt"
timeout 120 python benchmarks/bench_embedders.py --device cuda --backends torch,torch-cudagraph,onnx --calls 50 \
  > "$out/embedders.json" 2> "$out/embedders.log"
timeout 330 das-stream bench --quick --device cuda --only compute,latency,capacity --out "$out/bench.json" \
  > /dev/null 2> "$out/bench.log"
tail -20 "$out/bench.log"
