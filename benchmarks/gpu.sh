#!/usr/bin/env bash
# The GPU benchmark in one command: unet_base training (batch 128, bf16, SDPA; torch.compile and channels_last
# on and off) and DDIM-50 sampling beside diffusers' UNet2DModel, with MFU; writes benchmarks/results/<device>.json.
# Then SD 1.5's UNet beside diffusers' UNet2DConditionModel in bf16 (benchmarks/sd15.py).
# On a machine without CUDA it runs the tiny preset (the same code path, seconds). Options: benchmarks/gpu.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" -m benchmarks.gpu "$@"
# Stable Diffusion 1.5's UNet beside diffusers' in bf16 at 512x512 (64x64 latents), where there is a GPU (issue 30)
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -m benchmarks.sd15 --device cuda --dtype bf16 --latent 64 --repeats 5
fi
