#!/usr/bin/env bash
# Three sizes each of UNet and DiT on toy-birds at equal CPU-minutes (one thread each, two runs at a time),
# then 128-prompt evaluations and the cost/quality table. Usage: experiments/scaling/run.sh [minutes]
set -euo pipefail
cd "$(dirname "$0")/../.."
MIN="${1:-2.5}"
OUT=outputs/scaling
train() {  # name, overrides...
  local name=$1; shift
  rm -rf "$OUT/$name"
  OMP_NUM_THREADS=1 .venv/bin/python train.py hydra.run.dir="$OUT/$name" trainer.max_minutes="$MIN" \
    trainer.fit_schedule_to_time=true trainer.sample_every=0 trainer.num_workers=0 "$@" > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
train unet_c16 & train dit_d48 model=dit_tiny model.hidden_size=48 & wait
train unet_c24 model.base_channels=24 & train dit_d96 model=dit_tiny & wait
train unet_c32 model.base_channels=32 & train dit_d144 model=dit_tiny model.hidden_size=144 & wait
for name in unet_c16 unet_c24 unet_c32 dit_d48 dit_d96 dit_d144; do
  .venv/bin/python -m diffusion.evaluation --ckpt "$OUT/$name/checkpoints/last.ckpt" --num 128 --out "$OUT/$name/eval" > "$OUT/$name.eval.log" 2>&1
done
.venv/bin/python -m diffusion.evaluation.cost $OUT/unet_c16 $OUT/unet_c24 $OUT/unet_c32 $OUT/dit_d48 $OUT/dit_d96 $OUT/dit_d144 \
  --chart experiments/scaling/cost.png --json experiments/scaling/results.json
