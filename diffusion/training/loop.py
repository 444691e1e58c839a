"""`train_diffusion(cfg)`: the denoiser's training loop, read top to bottom: set up -> (resume) -> for each step: lr, micro-batches,
clip, optimizer, EMA -> log / sample / checkpoint -> stop cleanly on a signal or at max_steps.

    python train.py                                  # toy-birds, unet_tiny, CPU-sized
    python train.py dataset=birds model=unet_small trainer.max_steps=50000
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from diffusion import checkpoint as ckpt
from diffusion.config import build_sampler, objective_for, target_class
from diffusion.cost import RunCost, count_flops
from diffusion.errors import UserError
from diffusion.model import build_diffusion_model, count_parameters, legacy_keys, text_needs_vocabulary
from diffusion.spaces import prepare_space
from diffusion.training.checks import diverged, validate_trainer
from diffusion.training.data import batch_stream, build_dataset, data_info
from diffusion.training.ema import EMA
from diffusion.training.grids import SampleGrid, fixed_prompts
from diffusion.training.logging import MetricsLogger
from diffusion.training.optim import lr_at, make_optimizer, set_lr
from diffusion.training.posthoc_ema import PosthocSnapshots
from diffusion.training.resume import finished, resolve_resume, restore_rng, rng_state
from diffusion.training.runtime import Processes, autocast, close_processes, init_processes, step_generator
from diffusion.training.signals import GracefulStop


def train_diffusion(cfg) -> Path:
    """Train the denoiser as `cfg` says (task=diffusion) and return the final checkpoint's path."""
    processes, device = init_processes(cfg.device)
    try:
        return train_denoiser(cfg, processes, device)
    finally:
        close_processes(processes)


def validate(cfg) -> None:
    """Every diffusion-training key, before any work: the schema (diffusion/schema.py), the objective and its sampler."""
    validate_trainer(cfg)
    build_sampler(cfg.sampler, objective_for(cfg))  # a bad objective value, or a sampler that cannot sample it


def train_denoiser(cfg, processes, device: torch.device) -> Path:
    validate(cfg)
    trainer = cfg.trainer
    run_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = run_dir / "checkpoints"
    resumed = resolve_resume(cfg, run_dir, kind="diffusion")
    if finished(resumed, cfg):  # said so in one line; the run is left as it is
        return Path(resumed["_path"])

    # data, and the space the model denoises (pixels, or an autoencoder's latents)
    dataset = build_dataset(cfg, "train")
    space = prepare_space(cfg, dataset, device, processes)
    info = {**data_info(dataset), **space.info}
    vocabulary = None
    if text_needs_vocabulary(cfg.text):
        vocabulary = (resumed["tokenizer"]["vocabulary"] if resumed else
                      target_class(cfg.text, "text").vocabulary_from_captions(dataset.all_captions(), cfg.text.min_count))

    # model, EMA, optimizer (built identically on every process from the same seed)
    torch.manual_seed(cfg.seed)
    model = build_diffusion_model(cfg, info, vocabulary).to(device)
    factor = int(getattr(model.denoiser, "downsampling", 1))  # the UNet's total halving, or the DiT's patch size
    if info["shape"][1] % factor or info["shape"][1] < factor:
        what = (f"split into {factor}x{factor} patches" if hasattr(model.denoiser, "patch_size") else
                f"halve {len(cfg.model.get('channel_mult', ())) - 1} times")
        raise UserError(f"the model's input is {info['shape'][1]}px, which the network cannot {what}; "
                        f"use a resolution divisible by {factor} (dataset.resolution) or a smaller model.patch_size")
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = EMA(model, trainer.ema_decay, trainer.ema_warmup)
    posthoc = trainer.get("posthoc_ema", {})  # power-function EMA profiles for choosing the length after training
    posthoc = PosthocSnapshots(model, posthoc.sigma_rels, posthoc.every, run_dir) if posthoc.get("every", 0) else None
    optimizer = make_optimizer(model.parameters(), cfg.optim, device,
                               model.text_encoder.parameters() if model.text_encoder is not None else ())
    start_step, samples_seen, trained_before = 0, 0, 0.0
    if resumed:
        start_step, samples_seen = load_training_state(resumed, model, ema, optimizer)
        trained_before = float(resumed.get("train_seconds", 0.0))
        if posthoc:
            posthoc.load_state_dict(resumed.get("posthoc_ema"))
    objective = objective_for(cfg)

    cost = RunCost(training_flops_per_image(model, objective, cfg, dataset, info, device, memory_format), device,
                   processes.world_size, cfg.get("cost", {}).get("power_watts"), resumed.get("cost") if resumed else None)

    forward = model
    if processes.distributed:
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if trainer.compile:
        forward = torch.compile(forward)

    global_micro_batch = trainer.batch_size * processes.world_size
    samples_per_step = global_micro_batch * trainer.grad_accum  # the global batch
    stream = space.batches(batch_stream(space.training_data(dataset), trainer.batch_size, cfg.seed, samples_seen, processes.rank,
                                        processes.world_size, trainer.num_workers, device.type == "cuda"))
    logger = MetricsLogger(run_dir, cfg, enabled=processes.is_main)
    if resumed:
        logger.resume_at(start_step)
    grid = SampleGrid(cfg, dataset, space, run_dir, device) if processes.is_main else None
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(checkpoint_dir)
        print(f"training {count_parameters(model.denoiser) / 1e6:.2f}M-parameter {type(model.denoiser).__name__}"
              + (f" + {count_parameters(model.text_encoder) / 1e6:.2f}M text encoder" if model.text_encoder else "")
              + f" on {type(dataset).__name__} at {info['resolution']}px ({space.name}) on {device}; run: {run_dir}")

    def save(step: int, periodic: bool) -> Path:
        payload = training_state(cfg, model, ema, optimizer, step, info, vocabulary, space, processes)
        payload["samples_seen"] = samples_seen
        payload["train_seconds"] = trained_before + time.time() - start_time  # across resumes
        payload["cost"] = cost.totals(samples_seen)
        if posthoc:
            payload["posthoc_ema"] = posthoc.state_dict()
        if periodic:
            ckpt.save_checkpoint(payload, checkpoint_dir / f"step_{step:07d}.ckpt")
            ckpt.prune_checkpoints(checkpoint_dir, trainer.keep_last)
        return ckpt.save_checkpoint(payload, checkpoint_dir / "last.ckpt")

    nonfinite = torch.zeros((), device=device, dtype=torch.bool)  # read only at log/checkpoint steps: no sync per step
    loss_sum = torch.zeros((), device=device)
    last_log_time, last_log_step = time.time(), start_step
    start_time, last_good = time.time(), None
    # the time budget: this run's training time, or with fit_schedule_to_time the whole run's (across resumes),
    # which the lr decay then also spans; `spent` is agreed between processes so every replica has the same lr
    fit_to_time = bool(trainer.get("fit_schedule_to_time", False))
    budget_s = None if trainer.max_minutes is None else 60 * trainer.max_minutes
    spent_before = trained_before if fit_to_time else 0.0
    spent = spent_before
    bar = tqdm(total=trainer.max_steps, initial=start_step, desc="training", unit="step", disable=not processes.is_main,
               dynamic_ncols=True)
    model.train()
    step, stopping = start_step, False
    with GracefulStop() as stop, bar:
        while step < trainer.max_steps:
            lr = lr_at(step, trainer.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay, cfg.optim.min_lr_ratio,
                       time_progress=spent / budget_s if fit_to_time else 0.0)
            set_lr(optimizer, lr)
            loss = train_step(forward, model, ema, optimizer, [next(stream) for _ in range(trainer.grad_accum)],
                              objective, cfg, processes, device, step, memory_format)
            if posthoc:
                posthoc.update(model, step)
            loss_sum += loss
            nonfinite |= ~torch.isfinite(loss)
            step += 1
            samples_seen += samples_per_step
            bar.update(1)

            if not processes.distributed:
                spent = spent_before + time.time() - start_time
            elif step % 10 == 0:  # the slowest process's clock, every 10 steps
                spent = agreed_max(spent_before + time.time() - start_time, device)
            out_of_time = budget_s is not None and spent > budget_s
            budget_done = fit_to_time and out_of_time  # the planned end of a timed run: finished, not interrupted
            stopping = stop.requested or (out_of_time and not fit_to_time)
            if processes.distributed and (step % 10 == 0 or step % trainer.log_every == 0):
                stopping = agree(stopping, device)  # every process stops at the same step
            finishing = step == trainer.max_steps or stopping or budget_done
            if step % trainer.log_every == 0 or finishing:
                if processes.distributed:
                    nonfinite = torch.tensor(agree(bool(nonfinite), device), device=device)
                    torch.distributed.all_reduce(loss_sum)
                    loss_sum /= processes.world_size
                if bool(nonfinite):
                    raise diverged(step, last_good)
                elapsed = time.time() - last_log_time
                values = {"loss": loss_sum.item() / ((step - last_log_step) * trainer.grad_accum), "lr": lr,
                          "images_per_s": (step - last_log_step) * global_micro_batch * trainer.grad_accum / max(elapsed, 1e-9),
                          "elapsed_s": round(time.time() - start_time, 2)}
                totals = cost.totals(samples_seen)
                values.update(train_flops=totals["train_flops"], images_seen=totals["images_seen"],
                              device_s=round(totals["device_seconds"], 2), energy_j=round(totals["energy_j"], 2))
                logger.log(step, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.1e}", img_s=f"{values['images_per_s']:.0f}")
                loss_sum.zero_()
                last_log_time, last_log_step = time.time(), step
            if processes.is_main and not finishing and trainer.checkpoint_every and step % trainer.checkpoint_every == 0:
                if bool(nonfinite):
                    raise diverged(step, last_good)
                last_good = (save(step, periodic=True), step)
            if processes.is_main and posthoc:
                posthoc.save(step, final=finishing)
            if processes.is_main and trainer.sample_every and step % trainer.sample_every == 0 and not finishing:
                logger.log_image(step, "samples", grid.draw(ema.model, step))
            if stopping:
                reason = f"signal {stop.signal_name}" if stop.requested else (
                    f"trainer.max_minutes={trainer.max_minutes}" if out_of_time else "another process was stopped")
                bar.write(f"stopping at step {step} ({reason}); checkpoint saved, continue with resume=auto", file=sys.stderr)
                break
            if budget_done:
                bar.write(f"time budget reached at step {step} (trainer.max_minutes={trainer.max_minutes}; the lr decay "
                          f"was fitted to it)", file=sys.stderr)
                break
    final = checkpoint_dir / "last.ckpt"
    if processes.distributed:
        logger.log(step, {"replica_max_difference": replica_difference(model, device)})
    if processes.is_main:
        final = save(step, periodic=False)
        if not stopping:
            logger.log_image(step, "samples", grid.draw(ema.model, step))
        print(f"checkpoint: {final}")
        print(RunCost.line(cost.totals(samples_seen)))
    logger.close()
    return final


def train_step(forward, model, ema, optimizer, batches: list, objective, cfg, processes, device, step: int,
               memory_format) -> torch.Tensor:
    """One optimizer step over the micro-batches of `batches` (trainer.grad_accum of them): losses, backward,
    gradient clipping, optimizer, EMA. Returns the summed micro-batch loss as a device tensor: nothing here reads
    a value on the host (tests/test_gpu_ready.py runs it on the meta device, where any such read fails)."""
    loss_sum = torch.zeros((), device=device)
    for micro, batch in enumerate(batches):
        sync = contextlib.nullcontext()
        if processes.distributed and micro < len(batches) - 1:
            sync = forward.no_sync()  # average gradients once per optimizer step, not per micro-batch
        with sync:
            loss = micro_batch_loss(forward, batch, objective, cfg, processes, device, step, micro, memory_format)
            (loss / len(batches)).backward()
        loss_sum = loss_sum + loss.detach()
    if cfg.trainer.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model, step)
    return loss_sum


def micro_batch_loss(forward, batch, objective, cfg, processes, device, step, micro, memory_format) -> torch.Tensor:
    """The mean loss of this process's share of one global micro-batch, under `objective` (ddpm, flow,
    edm: how x_t is made, what the network is given, the loss weight). Timesteps, noise and caption
    dropout are drawn for the whole global micro-batch and sliced, so any number of processes (with
    the same global batch) trains on exactly the same draws."""
    x0 = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
    size, world, rank = x0.shape[0], processes.world_size, processes.rank
    mine = slice(rank * size, (rank + 1) * size)
    cpu_random = step_generator(cfg.seed, step, micro, torch.device("cpu"))
    device_random = cpu_random if device.type == "cpu" else step_generator(cfg.seed, step, micro, device)
    # non_blocking: a plain .to(cuda) of a CPU tensor waits for the GPU to finish its queue (a sync per step)
    t = objective.draw_times(size * world, cpu_random)[mine].to(device, non_blocking=True)
    dropped = (torch.rand(size * world, generator=cpu_random) < cfg.diffusion.caption_dropout)[mine]
    noise = torch.randn((size * world, *x0.shape[1:]), generator=device_random, device=device)[mine]
    noise = noise.contiguous(memory_format=memory_format)
    prompts = ["" if drop else text for text, drop in zip(batch["text"], dropped.tolist())]
    labels = batch["label"].clone()
    labels[dropped] = -1  # the "no class" label, dropped together with the caption

    def network(x, time, unconditional: bool = False, rows: slice = slice(None), **times):
        """The model on this micro-batch's prompts of `rows` (or on empty ones): the objective calls it, MeanFlow
        several times on parts of the batch, once inside a JVP."""
        if unconditional:
            return forward(x, time, prompts=[""] * x.shape[0], class_labels=torch.full_like(labels[rows], -1), **times)
        return forward(x, time, prompts=prompts[rows], class_labels=labels[rows], **times)

    with autocast(device, cfg.trainer.precision):
        return objective.training_loss(network, x0, noise, t).mean()


def training_flops_per_image(model, objective, cfg, dataset, info, device, memory_format) -> float:
    """FLOPs of training on one image (text encoder, denoiser, loss; forward + backward), counted once on a
    2-image micro-batch of the run's own shapes and a real caption. The RNG and the gradients are left as
    they were, so the run trains exactly as it would without the count."""
    n = 2
    caption = fixed_prompts(dataset, 1)[0] if len(dataset) else ""
    batch = {"image": torch.zeros(n, *info["shape"]), "text": [caption] * n, "label": torch.zeros(n, dtype=torch.long)}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        flops, _ = count_flops(lambda: micro_batch_loss(model, batch, objective, cfg, Processes(), device, 0, 0,
                                                        memory_format).backward())
    model.zero_grad(set_to_none=True)
    return flops / n


def training_state(cfg, model, ema, optimizer, step, info, vocabulary, space, processes) -> dict:
    """Everything a resumed run or `sample.py` needs, as tensors and plain Python values."""
    return {
        "kind": "diffusion",
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "tokenizer": {"vocabulary": list(vocabulary), "max_length": int(cfg.text.max_length)} if vocabulary else None,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "data": info,
        "autoencoder": space.reference,
        "world_size": processes.world_size,
    }


def load_training_state(payload: dict, model, ema, optimizer) -> int:
    try:
        model.load_state_dict(legacy_keys(payload["model"]))
        ema.load_state_dict(legacy_keys(payload["ema"]))
    except RuntimeError as error:
        raise UserError(f"the checkpoint to resume does not fit this model config ({str(error).splitlines()[0][:120]}); "
                        f"resume with the config it was trained with") from None
    optimizer.load_state_dict(payload["optimizer"])
    restore_rng(payload.get("rng"))
    return int(payload["step"]), int(payload.get("samples_seen", 0))


def agree(flag: bool, device) -> bool:
    """True on every process when it is true on any (a 1-element all-reduce)."""
    return bool(agreed_max(float(flag), device))


def agreed_max(value: float, device) -> float:
    """The largest of the processes' values, on every process."""
    tensor = torch.tensor([float(value)], device=device, dtype=torch.float64)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def replica_difference(model, device) -> float:
    """The largest difference between this process's weights and rank 0's (0.0 when DDP kept them in sync)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    reference = flat.clone()
    torch.distributed.broadcast(reference, src=0)
    difference = (flat - reference).abs().max().reshape(1)
    torch.distributed.all_reduce(difference, op=torch.distributed.ReduceOp.MAX)
    return float(difference.item())
