#!/usr/bin/env bash
# Every GPU check (inference: issue 3; NVML detection and preemption: issue 6), as one run for a machine with an NVIDIA GPU
# (the `device` tool's H200: Python 3.12 + torch + grpcio + protobuf + nvidia-ml-py, no
# internet). Missing wheels travel in .whl/ (see /work/.library/device/README.md):
#   cryptography cffi pycparser safetensors rich markdown-it-py mdurl pygments pytest
#   pluggy iniconfig packaging pytest-asyncio pytest-timeout grpcio-health-checking
#   grpcio-reflection (and grpcio/protobuf when theirs are older than pyproject's floors)
# Writes the test log and benchmark tables to $OUT (or bench/results/ without it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/proto:$PWD/coordinator:$PWD/worker:$PWD/sdk:$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
stamp=$(date +%Y%m%d-%H%M%S)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu-$stamp.txt"
python3 -m pytest -p no:cacheprovider -m gpu -v -s --timeout 600 \
  tests/inference/test_gpu.py tests/e2e/test_inference.py 2>&1 | tee -a "$OUT/gpu-$stamp.txt"
python3 bench/inference.py --model vit-b16 --device cuda --precision bf16 --batches 128 \
  --shard-batches 16 2>&1 | tail -25 | tee -a "$OUT/gpu-$stamp.txt"
python3 bench/inference.py --model vit-b16 --device cuda --precision bf16 --batches 128 \
  --shard-batches 16 --compile 2>&1 | tail -25 | tee -a "$OUT/gpu-$stamp.txt"
python3 bench/nvml_probe.py --trials 3 2>&1 | tail -30 | tee -a "$OUT/gpu-$stamp.txt"
cp bench/results/inference-*.txt bench/results/nvml-probe-2*.txt "$OUT"/ 2>/dev/null || true
