#!/usr/bin/env bash
# Every measurement of experiments/latent/README.md, in order (~1 hour on the shared 2-core CPU).
# One thread and nice: the machine is shared (torch on 2 threads beside another busy process stalls).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=outputs/latent
export OMP_NUM_THREADS=1
# the settings of both autoencoder runs: batch 8, AdamW 1e-3 with 100 warm-up steps and cosine decay over
# 4000 steps, EMA of the weights (it encodes and decodes), PSNR + grid every 500 steps, stop at 20 minutes
VAE="experiment=ldm_toybirds task=vae vae.ema=true trainer.batch_size=8 optim.lr=1e-3 optim.warmup_steps=100
     trainer.max_steps=4000 trainer.max_minutes=20 trainer.sample_every=500 trainer.checkpoint_every=1000
     trainer.log_every=100"
nice -n 10 $PY train.py $VAE vae.loss.critic_weight=0 hydra.run.dir=$OUT/vae_no_critic
nice -n 10 $PY train.py $VAE vae.loss.critic_weight=0.5 vae.loss.critic_start_step=1000 hydra.run.dir=$OUT/vae_critic
nice -n 10 $PY train.py $VAE hydra.run.dir=$OUT/vae_critic_late   # the default critic: 0.1 from step 2000 (kl_f4.yaml)
nice -n 10 $PY experiments/latent/report.py $OUT/vae_no_critic $OUT/vae_critic $OUT/vae_critic_late
# latent vs pixel diffusion, unet_tiny at 64x64, batch 16, 100 steps each
nice -n 10 $PY experiments/latent/speed.py --vae $OUT/vae_no_critic/checkpoints/last.ckpt --steps 100 --batch 16
