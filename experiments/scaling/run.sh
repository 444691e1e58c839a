#!/usr/bin/env bash
# Three sizes each of UNet and DiT on toy-birds at equal CPU-minutes (one thread each, two runs at a time),
# then 128-prompt evaluations and the cost/quality table of the round.
#   experiments/scaling/run.sh MINUTES [RUN ...]     RUN: unet_c16 unet_c24 unet_c32 dit_d48 dit_d96 dit_d144 (default all)
#   DIT_LR=1e-3 experiments/scaling/run.sh 10         the DiT's peak learning rate (default: the tuned one below)
# Runs go to outputs/scaling/<MINUTES>min/<RUN>; the round's table to experiments/scaling/results_<MINUTES>min.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make install' first" >&2; exit 2; }
MIN="${1:-2.5}"; shift || true
RUNS=("$@"); [ ${#RUNS[@]} -eq 0 ] && RUNS=(unet_c16 dit_d48 unet_c24 dit_d96 unet_c32 dit_d144)
DIT_LR="${DIT_LR:-2e-3}"
OUT="outputs/scaling/${MIN}min"
overrides() {  # the model overrides of a run name
  case $1 in
    unet_c16) echo "model.base_channels=16" ;;
    unet_c24) echo "model.base_channels=24" ;;
    unet_c32) echo "model.base_channels=32" ;;
    dit_d48)  echo "model=dit_tiny model.hidden_size=48 optim.lr=$DIT_LR" ;;
    dit_d96)  echo "model=dit_tiny model.hidden_size=96 optim.lr=$DIT_LR" ;;
    dit_d144) echo "model=dit_tiny model.hidden_size=144 optim.lr=$DIT_LR" ;;
    *) echo "unknown run '$1': use unet_c16|unet_c24|unet_c32|dit_d48|dit_d96|dit_d144" >&2; exit 2 ;;
  esac
}
train() {  # name: one thread, stops (annealed) after MIN minutes
  local name=$1
  rm -rf "${OUT:?}/$name"
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 .venv/bin/python train.py hydra.run.dir="$OUT/$name" trainer.max_minutes="$MIN" \
    trainer.max_steps=1000000 trainer.fit_schedule_to_time=true trainer.sample_every=0 trainer.num_workers=0 \
    $(overrides "$name") > "$OUT/$name.log" 2>&1
}
evaluate() {
  OMP_NUM_THREADS=1 .venv/bin/python -m diffusion.evaluation --ckpt "$OUT/$1/checkpoints/last.ckpt" --num 128 \
    --out "$OUT/$1/eval" > "$OUT/$1.eval.log" 2>&1
}
mkdir -p "$OUT"
for name in "${RUNS[@]}"; do overrides "$name" > /dev/null; done
for ((i = 0; i < ${#RUNS[@]}; i += 2)); do  # two at a time: one per core
  train "${RUNS[i]}" & [ $((i + 1)) -lt ${#RUNS[@]} ] && train "${RUNS[i + 1]}" & wait
done
for ((i = 0; i < ${#RUNS[@]}; i += 2)); do
  evaluate "${RUNS[i]}" & [ $((i + 1)) -lt ${#RUNS[@]} ] && evaluate "${RUNS[i + 1]}" & wait
done
.venv/bin/python -m diffusion.evaluation.cost "${RUNS[@]/#/$OUT/}" --json "experiments/scaling/results_${MIN}min.json" \
  --chart "experiments/scaling/cost_${MIN}min.png"
