#!/usr/bin/env bash
# The GPU benchmark in one command: unet_base training (batch 128, bf16, SDPA; torch.compile and channels_last
# on and off) and DDIM-50 sampling beside diffusers' UNet2DModel, with MFU; writes benchmarks/results/<device>.json.
# On a machine without CUDA it runs the tiny preset (the same code path, seconds). Options: benchmarks/gpu.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks.gpu "$@"
