#!/usr/bin/env bash
# The DiT's learning rate on toy-birds: DiT D96 (model=dit_tiny) for MINUTES CPU-minutes at each peak lr, as one
# round of run.sh (one thread, two runs at a time; 128-prompt evaluations; the table results_lr_<MINUTES>min.json).
#   experiments/scaling/lr_sweep.sh [MINUTES] [LR ...]      default: 5 minutes at 3e-4 6e-4 1e-3 2e-3
set -euo pipefail
MIN="${1:-5}"; shift || true
LRS=("$@"); [ ${#LRS[@]} -eq 0 ] && LRS=(3e-4 6e-4 1e-3 2e-3)
ROUND="lr_${MIN}min" exec "$(dirname "$0")/run.sh" "$MIN" "${LRS[@]/#/dit_d96_lr}"
