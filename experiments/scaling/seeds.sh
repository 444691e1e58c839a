#!/usr/bin/env bash
# One comparison of the scaling rounds re-run over training seeds, each run held at a fixed number of steps (the
# steps its CPU-minutes bought in the round it comes from), so the load on the machine changes wall time, not the
# models: then a --num 256 evaluation of each and the table of means with 95% t-intervals over seeds.
#   experiments/scaling/seeds.sh ROUND RUN:STEPS [RUN:STEPS ...]
#   experiments/scaling/seeds.sh 10min unet_c16:1238 dit_d96:555      (the 10-minute round's best UNet and best DiT)
#   SEEDS="0 1 2 3 4" experiments/scaling/seeds.sh ...                  (default SEEDS="0 1 2")
# RUN is run.sh's (unet_c<channels> | dit_d<width>[_lr<rate>]). Runs go to outputs/scaling/seeds_<ROUND>/<RUN>_s<seed>;
# a run that finished before (a done marker) is kept. The table goes to experiments/scaling/seeds_<ROUND>.json/.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make install' first" >&2; exit 2; }
[ $# -ge 2 ] || { echo "usage: experiments/scaling/seeds.sh ROUND RUN:STEPS [RUN:STEPS ...] (e.g. 10min unet_c16:1238 dit_d96:555)" >&2; exit 2; }
ROUND=$1; shift
SEEDS=(${SEEDS:-0 1 2})
DIT_LR="${DIT_LR:-2e-3}"
OUT="outputs/scaling/seeds_$ROUND"
source experiments/scaling/runs.sh  # overrides RUN: the model overrides of a run name
JOBS=(); NAMES=()
for spec in "$@"; do
  [[ $spec =~ ^([a-z0-9_.e-]+):([0-9]+)$ ]] || { echo "'$spec': give RUN:STEPS, e.g. unet_c16:1238" >&2; exit 2; }
  name=${BASH_REMATCH[1]}; steps=${BASH_REMATCH[2]}
  overrides "$name" > /dev/null
  NAMES+=("$name")
  for seed in "${SEEDS[@]}"; do JOBS+=("$name:$steps:$seed"); done
done
train() {  # RUN:STEPS:SEED, one thread
  IFS=: read -r name steps seed <<< "$1"
  local dir="$OUT/${name}_s$seed"
  [ -f "$dir/done" ] && return 0
  rm -rf "$dir"
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 .venv/bin/python train.py hydra.run.dir="$dir" seed="$seed" trainer.max_steps="$steps" \
    trainer.sample_every=0 trainer.num_workers=0 $(overrides "$name") > "$dir.log" 2>&1 && touch "$dir/done"
}
evaluate() {
  IFS=: read -r name steps seed <<< "$1"
  local dir="$OUT/${name}_s$seed"
  [ -f "$dir/eval/evaluation.json" ] && return 0
  OMP_NUM_THREADS=1 .venv/bin/python -m diffusion.evaluation --ckpt "$dir/checkpoints/last.ckpt" --num 256 \
    --out "$dir/eval" > "$dir.eval.log" 2>&1
}
mkdir -p "$OUT"
for ((i = 0; i < ${#JOBS[@]}; i += 2)); do  # two at a time: one per core
  train "${JOBS[i]}" & [ $((i + 1)) -lt ${#JOBS[@]} ] && train "${JOBS[i + 1]}" & wait
done
for ((i = 0; i < ${#JOBS[@]}; i += 2)); do
  evaluate "${JOBS[i]}" & [ $((i + 1)) -lt ${#JOBS[@]} ] && evaluate "${JOBS[i + 1]}" & wait
done
.venv/bin/python experiments/scaling/seeds.py "$OUT" --json "experiments/scaling/seeds_$ROUND.json" \
  --table "experiments/scaling/seeds_$ROUND.md" --runs "${NAMES[@]}"
