"""`train_autoencoder(cfg)`: the first stage of latent diffusion (Rombach et al. 2022, sec. 3.1), with the same
shape as the diffusion loop: set up -> (resume) -> for each step: lr, micro-batches (autoencoder, then critic),
clip, optimizers, EMA -> log / reconstruction check / checkpoint -> stop cleanly on a signal or at max_steps.

    python train.py task=vae vae=kl_f4                          # toy-birds at the dataset's resolution
    python train.py task=vae vae=kl_f4 dataset.resolution=64 vae.loss.critic_weight=0   # no critic

Loss per image (Esser et al. 2021 eq. 5-7; Rombach et al. appendix G):
    L = rec(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)) + [step >= critic_start_step] * critic_weight * lambda * (-mean D_psi(D(z)))
with z a posterior sample, lambda the adaptive weight. Both the reconstruction and the KL are divided by the
number of pixel values, so kl_weight means what it means in Rombach et al. (per-image sums) while the loss
reads as a per-pixel error. The critic D_psi has its own optimizer and the hinge loss.

The checkpoint (kind "vae") holds the weights, both optimizers, the config, the data info and the latent
`scale_factor` = 1 / std of the latents, measured on training images whenever a checkpoint is written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from diffusion import checkpoint as ckpt
from diffusion.config import build
from diffusion.errors import UserError
from diffusion.model import count_parameters
from diffusion.spaces.autoencoder import build_autoencoder, encoding_weights, latent_scale_factor, reconstruction_loss
from diffusion.training.adversarial import adaptive_weight, critic_active, generator_loss, hinge_d_loss
from diffusion.training.checks import diverged, validate_trainer
from diffusion.training.data import batch_stream, build_dataset, data_info
from diffusion.training.ema import EMA
from diffusion.training.logging import MetricsLogger
from diffusion.training.optim import lr_at, make_optimizer, set_lr
from diffusion.training.reconstructions import ReconstructionCheck, first_images
from diffusion.training.resume import finished, resolve_resume, restore_rng, rng_state
from diffusion.training.runtime import autocast, close_processes, init_processes, step_generator
from diffusion.training.signals import GracefulStop

SCALE_FACTOR_IMAGES = 256  # training images whose latents set the scale factor: its std settles well within 1 %
CRITIC_BETAS = (0.5, 0.9)  # Adam betas of the critic (Esser et al. 2021): a short memory suits a moving target


def train_autoencoder(cfg) -> Path:
    """Train the autoencoder as `cfg` says and return the final checkpoint's path."""
    if not cfg.get("vae") or not cfg.vae.get("_target_"):
        raise UserError("task=vae trains an autoencoder, but vae=none has none: pick vae=kl_f4 (or vae=kl_f8)")
    if cfg.trainer.get("fit_schedule_to_time"):
        raise UserError("trainer.fit_schedule_to_time is for the diffusion model; the autoencoder's lr decay follows "
                        "trainer.max_steps: drop it (trainer.max_minutes alone still stops training on time)")
    processes, device = init_processes(cfg.device)
    try:
        if processes.distributed:
            raise UserError("task=vae trains in one process: start it with `python train.py task=vae ...`, not torchrun")
        return train_first_stage(cfg, device)
    finally:
        close_processes(processes)


def validate_loss(loss) -> None:
    for key in ("kl_weight", "critic_weight"):
        if not loss[key] >= 0:
            raise UserError(f"vae.loss.{key} must be >= 0, got {loss[key]}")
    if loss.critic_weight > 0 and not loss.critic_lr > 0:
        raise UserError(f"vae.loss.critic_lr must be > 0, got {loss.critic_lr}")


def train_first_stage(cfg, device: torch.device) -> Path:
    validate_trainer(cfg)
    validate_loss(cfg.vae.loss)
    trainer, loss_cfg = cfg.trainer, cfg.vae.loss
    run_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = run_dir / "checkpoints"
    resumed = resolve_resume(cfg, run_dir, kind="vae")
    if finished(resumed, cfg):  # said so in one line; the run is left as it is
        return Path(resumed["_path"])

    dataset = build_dataset(cfg, "train")
    info = data_info(dataset)

    # networks, EMA, optimizers (the critic exists only when its weight is not zero)
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    autoencoder = build_autoencoder(cfg.vae).to(device, memory_format=memory_format)
    if info["resolution"] % autoencoder.downsampling:
        raise UserError(f"dataset.resolution={info['resolution']} is not a multiple of the autoencoder's "
                        f"downsampling {autoencoder.downsampling}")
    side = info["resolution"] // autoencoder.downsampling
    info["latent_shape"] = [autoencoder.latent_channels, side, side]
    critic = None
    if loss_cfg.critic_weight > 0:
        critic = build(loss_cfg.critic, where="vae.loss.critic", in_channels=info["channels"])
        critic = critic.to(device, memory_format=memory_format)
    ema = EMA(autoencoder, trainer.ema_decay, trainer.ema_warmup) if cfg.vae.ema else None
    optimizer = make_optimizer(autoencoder.parameters(), cfg.optim, device)
    critic_optimizer = None if critic is None else torch.optim.AdamW(
        critic.parameters(), lr=loss_cfg.critic_lr, betas=CRITIC_BETAS, weight_decay=0.0)
    start_step = 0
    if resumed:
        start_step = load_training_state(resumed, autoencoder, ema, optimizer, critic, critic_optimizer)

    stream = batch_stream(dataset, trainer.batch_size, cfg.seed, start_step * trainer.batch_size * trainer.grad_accum,
                          0, 1, trainer.num_workers, device.type == "cuda")
    logger = MetricsLogger(run_dir, cfg)
    if resumed:
        logger.resume_at(start_step)
    check = ReconstructionCheck(cfg, dataset, run_dir, device)
    scale_images = first_images(dataset, SCALE_FACTOR_IMAGES)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"training {count_parameters(autoencoder) / 1e6:.2f}M-parameter autoencoder (f{autoencoder.downsampling}, "
          f"latents {info['latent_shape']})"
          + (f" + {count_parameters(critic) / 1e6:.2f}M critic from step {loss_cfg.critic_start_step}" if critic else "")
          + f" on {type(dataset).__name__} at {info['resolution']}px on {device}; run: {run_dir}")

    def encoder() -> torch.nn.Module:
        return ema.model if ema is not None else autoencoder

    def save(step: int, periodic: bool) -> Path:
        scale = latent_scale_factor(encoder(), scale_images, trainer.batch_size, seed=cfg.seed)
        payload = training_state(cfg, autoencoder, ema, optimizer, critic, critic_optimizer, step, info, scale)
        if periodic:
            ckpt.save_checkpoint(payload, checkpoint_dir / f"step_{step:07d}.ckpt")
            ckpt.prune_checkpoints(checkpoint_dir, trainer.keep_last)
        else:
            print(f"latent scale factor 1 / std = {scale:.4f} (posterior samples of {len(scale_images)} training images)")
        return ckpt.save_checkpoint(payload, checkpoint_dir / "last.ckpt")

    def measure(step: int) -> float:
        value, path = check.run(encoder(), step)
        logger.log(step, {"val_psnr": round(value, 3)})
        logger.log_image(step, "reconstructions", path)
        return value

    nonfinite = torch.zeros((), device=device, dtype=torch.bool)  # read only at log/checkpoint steps: no sync per step
    sums = {}
    last_log_time, last_log_step = time.time(), start_step
    start_time, last_good, val_psnr = time.time(), None, None
    bar = tqdm(total=trainer.max_steps, initial=start_step, desc="training autoencoder", unit="step", dynamic_ncols=True)
    autoencoder.train()
    step = start_step
    with GracefulStop() as stop:
        while step < trainer.max_steps:
            lr = lr_at(step, trainer.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay, cfg.optim.min_lr_ratio)
            set_lr(optimizer, lr)
            with_critic = critic is not None and critic_active(step, loss_cfg.critic_start_step)
            for micro in range(trainer.grad_accum):
                x = next(stream)["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
                terms, reconstruction = autoencoder_loss(autoencoder, critic if with_critic else None, x, cfg, step, micro, device)
                (terms["loss"] / trainer.grad_accum).backward()
                if with_critic:
                    terms["critic_loss"] = critic_loss(critic, x, reconstruction.detach(), device, cfg.trainer.precision)
                    (terms["critic_loss"] / trainer.grad_accum).backward()
                for key, value in terms.items():  # (sum, count): the critic's terms exist only once it is on
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + value.detach(), count + 1)
                nonfinite |= ~torch.isfinite(terms["loss"].detach())
            if trainer.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(autoencoder.parameters(), trainer.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if with_critic:
                if trainer.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(critic.parameters(), trainer.grad_clip)
                critic_optimizer.step()
                critic_optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(autoencoder, step)
            step += 1
            bar.update(1)

            out_of_time = trainer.max_minutes is not None and time.time() - start_time > 60 * trainer.max_minutes
            finishing = step == trainer.max_steps or stop.requested or out_of_time
            if step % trainer.log_every == 0 or finishing:
                if bool(nonfinite):
                    raise diverged(step, last_good)
                elapsed = time.time() - last_log_time
                micro_batches = (step - last_log_step) * trainer.grad_accum
                values = {key: round(float(total) / count, 6) for key, (total, count) in sums.items()}
                values.update({"lr": lr, "images_per_s": micro_batches * trainer.batch_size / max(elapsed, 1e-9),
                               "elapsed_s": round(time.time() - start_time, 2)})
                logger.log(step, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", psnr="-" if val_psnr is None else f"{val_psnr:.1f}",
                                img_s=f"{values['images_per_s']:.0f}")
                sums = {}
                last_log_time, last_log_step = time.time(), step
            if trainer.sample_every and step % trainer.sample_every == 0 and not finishing:
                val_psnr = measure(step)
            if not finishing and trainer.checkpoint_every and step % trainer.checkpoint_every == 0:
                if bool(nonfinite):
                    raise diverged(step, last_good)
                last_good = (save(step, periodic=True), step)
            if stop.requested or out_of_time:
                reason = f"signal {stop.signal_name}" if stop.requested else f"trainer.max_minutes={trainer.max_minutes}"
                bar.write(f"stopping at step {step} ({reason}); checkpoint saved, continue with resume=auto", file=sys.stderr)
                break
    bar.close()
    final = save(step, periodic=False)
    if not stop.requested:
        print(f"held-out PSNR {measure(step):.2f} dB (posterior mean, {len(check.images)} val images)")
    print(f"checkpoint: {final}")
    logger.close()
    return final


def autoencoder_loss(autoencoder, critic, x, cfg, step, micro, device) -> tuple[dict, torch.Tensor]:
    """The autoencoder's loss terms for one micro-batch, and its reconstruction (for the critic).
    The posterior sample is drawn from a generator seeded by (seed, step, micro): a resumed run draws the same."""
    loss_cfg = cfg.vae.loss
    generator = step_generator(cfg.seed, step, micro, device)
    with autocast(device, cfg.trainer.precision):
        reconstruction, posterior = autoencoder(x, sample_posterior=True, generator=generator)
    reconstruction = reconstruction.float()
    rec = reconstruction_loss(reconstruction, x, loss_cfg.reconstruction)
    kl = posterior.kl().float().mean() / x[0].numel()  # per pixel value, like rec (see the module docstring)
    terms = {"rec": rec, "kl": kl}
    loss = rec + loss_cfg.kl_weight * kl
    if critic is not None:
        critic.requires_grad_(False)  # the critic's own step is separate; no gradients into it from here
        with autocast(device, cfg.trainer.precision):
            g_loss = generator_loss(critic(reconstruction).float())
        weight = loss_cfg.critic_weight * adaptive_weight(rec, g_loss, autoencoder.last_layer_weight)
        critic.requires_grad_(True)
        loss = loss + weight * g_loss
        terms.update(g_loss=g_loss, critic_weight=weight)
    terms["loss"] = loss
    return terms, reconstruction


def critic_loss(critic, x, reconstruction, device, precision) -> torch.Tensor:
    """Hinge loss of the critic on real images against (detached) reconstructions."""
    with autocast(device, precision):
        return hinge_d_loss(critic(x).float(), critic(reconstruction).float())


def training_state(cfg, autoencoder, ema, optimizer, critic, critic_optimizer, step, info, scale_factor) -> dict:
    """Everything a resumed run or latent diffusion needs, as tensors and plain Python values."""
    return {
        "kind": "vae",
        "step": step,
        "model": autoencoder.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "critic": None if critic is None else critic.state_dict(),
        "critic_optimizer": None if critic_optimizer is None else critic_optimizer.state_dict(),
        "rng": rng_state(),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "data": info,
        "scale_factor": scale_factor,
    }


def load_training_state(payload: dict, autoencoder, ema, optimizer, critic, critic_optimizer) -> int:
    try:
        autoencoder.load_state_dict(payload["model"])
        if ema is not None:
            ema.load_state_dict(encoding_weights(payload))
        if critic is not None and payload.get("critic") is not None:
            critic.load_state_dict(payload["critic"])
    except RuntimeError as error:
        raise UserError(f"the checkpoint to resume does not fit this vae config ({str(error).splitlines()[0][:120]}); "
                        f"resume with the config it was trained with") from None
    optimizer.load_state_dict(payload["optimizer"])
    if critic_optimizer is not None and payload.get("critic_optimizer") is not None:
        critic_optimizer.load_state_dict(payload["critic_optimizer"])
    restore_rng(payload.get("rng"))
    return int(payload["step"])
