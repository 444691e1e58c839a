# shellcheck shell=bash
# Sourced by run.sh and seeds.sh: the model overrides of a run name.
#   RUN: unet_c<base channels> | dit_d<hidden size> | dit_d<hidden size>_lr<peak lr>; DIT_LR where a RUN names none
overrides() {
  if [[ $1 =~ ^unet_c([0-9]+)$ ]]; then
    echo "model.base_channels=${BASH_REMATCH[1]}"
  elif [[ $1 =~ ^dit_d([0-9]+)(_lr([0-9.]+(e-?[0-9]+)?))?$ ]]; then
    echo "model=dit_tiny model.hidden_size=${BASH_REMATCH[1]} optim.lr=${BASH_REMATCH[3]:-${DIT_LR:-2e-3}}"
  else
    echo "unknown run '$1': use unet_c<channels>, dit_d<width> or dit_d<width>_lr<rate> (e.g. unet_c16 dit_d96_lr1e-3)" >&2
    exit 2
  fi
}
