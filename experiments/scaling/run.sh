#!/usr/bin/env bash
# Sizes of UNet and DiT on toy-birds at equal CPU-minutes (one thread each, two runs at a time),
# then 128-prompt evaluations and the cost/quality table of the round.
#   experiments/scaling/run.sh MINUTES [RUN ...]     default RUNs: unet_c16 unet_c24 unet_c32 dit_d48 dit_d96 dit_d144
#     RUN: unet_c<base channels> | dit_d<hidden size> | dit_d<hidden size>_lr<peak lr>  (e.g. dit_d96_lr1e-3)
#   DIT_LR=1e-3 experiments/scaling/run.sh 10         the DiTs' peak learning rate where a RUN names none (default 2e-3)
#   ROUND=lr_5min experiments/scaling/run.sh 5 ...    the round's name (default <MINUTES>min)
# Runs go to outputs/scaling/<ROUND>/<RUN>; the round's table and chart to experiments/scaling/results_<ROUND>.json
# and cost_<ROUND>.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make install' first" >&2; exit 2; }
MIN="${1:-2.5}"; shift || true
RUNS=("$@"); [ ${#RUNS[@]} -eq 0 ] && RUNS=(unet_c16 dit_d48 unet_c24 dit_d96 unet_c32 dit_d144)
DIT_LR="${DIT_LR:-2e-3}"
ROUND="${ROUND:-${MIN}min}"
OUT="outputs/scaling/$ROUND"
source experiments/scaling/runs.sh  # overrides RUN: the model overrides of a run name
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
for name in "${RUNS[@]}"; do overrides "$name" > /dev/null; done
mkdir -p "$OUT"
for ((i = 0; i < ${#RUNS[@]}; i += 2)); do  # two at a time: one per core
  train "${RUNS[i]}" & [ $((i + 1)) -lt ${#RUNS[@]} ] && train "${RUNS[i + 1]}" & wait
done
for ((i = 0; i < ${#RUNS[@]}; i += 2)); do
  evaluate "${RUNS[i]}" & [ $((i + 1)) -lt ${#RUNS[@]} ] && evaluate "${RUNS[i + 1]}" & wait
done
.venv/bin/python -m diffusion.evaluation.cost "${RUNS[@]/#/$OUT/}" --json "experiments/scaling/results_$ROUND.json" \
  --chart "experiments/scaling/cost_$ROUND.png" --overwrite  # a round re-run replaces its own table
