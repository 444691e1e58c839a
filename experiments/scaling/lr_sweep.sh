#!/usr/bin/env bash
# The DiT's learning rate on toy-birds: DiT D96 (model=dit_tiny) for MINUTES CPU-minutes (one thread, two runs at a time)
# at each peak lr, then 128-prompt evaluations and the table (experiments/scaling/lr_sweep.json).
#   experiments/scaling/lr_sweep.sh [MINUTES] [LR ...]      default: 5 minutes at 3e-4 6e-4 1e-3 2e-3
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make install' first" >&2; exit 2; }
MIN="${1:-5}"; shift || true
LRS=("$@"); [ ${#LRS[@]} -eq 0 ] && LRS=(3e-4 6e-4 1e-3 2e-3)
OUT="outputs/scaling/lr_${MIN}min"
mkdir -p "$OUT"
train() {
  rm -rf "${OUT:?}/dit_d96_lr$1"
  OMP_NUM_THREADS=1 .venv/bin/python train.py model=dit_tiny optim.lr="$1" hydra.run.dir="$OUT/dit_d96_lr$1" \
    trainer.max_minutes="$MIN" trainer.max_steps=1000000 trainer.fit_schedule_to_time=true trainer.sample_every=0 \
    trainer.num_workers=0 > "$OUT/dit_d96_lr$1.log" 2>&1
}
evaluate() {
  OMP_NUM_THREADS=1 .venv/bin/python -m diffusion.evaluation --ckpt "$OUT/dit_d96_lr$1/checkpoints/last.ckpt" \
    --num 128 --out "$OUT/dit_d96_lr$1/eval" > "$OUT/dit_d96_lr$1.eval.log" 2>&1
}
for ((i = 0; i < ${#LRS[@]}; i += 2)); do
  train "${LRS[i]}" & [ $((i + 1)) -lt ${#LRS[@]} ] && train "${LRS[i + 1]}" & wait
done
for ((i = 0; i < ${#LRS[@]}; i += 2)); do
  evaluate "${LRS[i]}" & [ $((i + 1)) -lt ${#LRS[@]} ] && evaluate "${LRS[i + 1]}" & wait
done
.venv/bin/python -m diffusion.evaluation.cost "${LRS[@]/#/$OUT/dit_d96_lr}" --json experiments/scaling/lr_sweep.json --chart experiments/scaling/lr_sweep.png
