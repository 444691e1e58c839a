"""`distill_consistency(cfg)`: task=distill, consistency distillation of a trained checkpoint into a few-step
student (Song et al. 2023; guidance folded in as LCM does, Luo et al. 2023). The loop has the diffusion loop's shape:
set up -> (resume) -> for each step: lr, groups' losses (consistency.py), clip, optimizer, EMA target, EMA -> log /
checkpoint -> stop cleanly on a signal, at max_minutes or at max_steps.

    python train.py task=distill teacher=outputs/<date>/<time>/checkpoints/last.ckpt trainer.max_steps=600
    python sample.py ckpt=<this run>/checkpoints/last.ckpt prompt="a small red bird" steps=2

The student is the teacher's network (UNet or DiT, its text encoder frozen), initialised from the teacher's EMA weights,
in the teacher's space (pixels, or the latents of the teacher's own autoencoder) and read through the teacher's
objective. Its checkpoint is an ordinary diffusion checkpoint whose stored config is the teacher's with `task: distill`,
`teacher: <path>`, the `distill` settings and a `consistency` sampler node holding everything its function needs
(solver, grid, boundary width): `sample.py ckpt=<student>` needs nothing else.

The guidance scale is fixed (distill.guidance_scale), not sampled and fed to the student: a w input would change the
networks' time embedding, which the backbones share with other work; the student is sampled at guidance_scale 1.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from diffusion import checkpoint as ckpt
from diffusion.config import CONF_DIR, build_sampler, is_consistency_student, target_class
from diffusion.cost import RunCost, count_flops
from diffusion.errors import UserError
from diffusion.model import count_parameters, open_payload
from diffusion.training.checks import diverged, validate_trainer
from diffusion.training.consistency import consistency_loss
from diffusion.training.data import batch_stream, build_dataset
from diffusion.training.ema import EMA
from diffusion.training.grids import fixed_prompts
from diffusion.training.logging import MetricsLogger
from diffusion.training.optim import lr_at, make_optimizer, set_lr
from diffusion.training.resume import resolve_resume, restore_rng, rng_state
from diffusion.training.runtime import close_processes, init_processes, step_generator
from diffusion.training.signals import GracefulStop

GRID_SAMPLE_STEPS = 2  # the sample grids draw the student at 2 steps


def distill_consistency(cfg) -> Path:
    """Distil `cfg.teacher` as `cfg` says (task=distill) and return the student's final checkpoint path."""
    processes, device = init_processes(cfg.device)
    try:
        if processes.distributed:
            raise UserError("task=distill trains in one process: start it with `python train.py task=distill ...`, "
                            "not torchrun")
        return distill(cfg, device)
    finally:
        close_processes(processes)


# ---------------------------------------------------------------------------------------------- checks and set-up


def validate(cfg) -> None:
    """Every distillation key, before any work: their types and ranges in the schema (diffusion/schema.py DistillKeys,
    checked with the trainer's), then the ones that join two keys."""
    validate_trainer(cfg)
    if not cfg.get("teacher"):
        raise UserError("task=distill needs the model to distil: teacher=outputs/<date>/<time>/checkpoints/last.ckpt")
    d = cfg.distill
    if d.skip > d.grid_points:
        raise UserError(f"distill.skip={d.skip}: use an integer in [1, distill.grid_points={d.grid_points}]")
    if d.level_groups > cfg.trainer.batch_size:
        raise UserError(f"distill.level_groups={d.level_groups}: use an integer in [1, trainer.batch_size="
                        f"{cfg.trainer.batch_size}]")


def open_teacher(cfg, device):
    """The teacher's LoadedModel (EMA weights), refused in one line when it is not a diffusion checkpoint."""
    path = Path(str(cfg.teacher))
    try:
        payload = ckpt.load_checkpoint(path, kind="diffusion")
    except UserError as error:
        raise UserError(f"teacher={path}: {error}") from None
    teacher = open_payload(payload, path, device)
    if is_consistency_student(teacher.config):
        raise UserError(f"teacher={path} is itself a consistency student; distil the model it came from "
                        f"({teacher.config.get('teacher')})")
    teacher.model.eval().requires_grad_(False)
    return teacher


def solver_node(cfg, teacher) -> dict:
    """The teacher's ODE solver as a sampler node: distill.solver, or the teacher's own sampler."""
    node = (OmegaConf.load(CONF_DIR / "sampler" / f"{cfg.distill.solver}.yaml") if cfg.distill.solver is not None
            else teacher.config.sampler)
    node = OmegaConf.to_container(node, resolve=True)
    node.pop("steps", None)
    return node


def student_sampler_node(cfg, solver: dict) -> dict:
    """The consistency sampler node stored in the student: everything its function and grid need."""
    options = {key: value for key, value in solver.items() if key not in ("_target_", "clip_sample")}
    name = target_class(solver, "distill.solver").name
    return {"_target_": "diffusion.samplers.ConsistencySampler", "solver": {"name": name, **options},
            "grid_points": int(cfg.distill.grid_points), "sigma_data": float(cfg.distill.sigma_data),
            "clip_sample": bool(solver.get("clip_sample", True)), "steps": GRID_SAMPLE_STEPS}


def distillation_space(cfg, teacher, dataset, device):
    """The teacher's space over the distillation data: its resolution, its pixels or its autoencoder's latents."""
    from diffusion.spaces.pixels import PixelSpace

    trained_at = int(teacher.payload["data"]["resolution"])
    if int(dataset.resolution) != trained_at:
        raise UserError(f"teacher={cfg.teacher} was trained at {trained_at}px but the data is {dataset.resolution}px "
                        f"(dataset.resolution): distil on data at the teacher's resolution")
    reference = teacher.payload.get("autoencoder")
    asked = cfg.get("vae", {}).get("ckpt") if cfg.get("vae") else None
    if reference is None:
        if asked:
            raise UserError(f"teacher={cfg.teacher} denoises pixels, but vae.ckpt={asked} asks for latents: drop vae "
                            f"(the student works in its teacher's space)")
        return PixelSpace(trained_at)
    from diffusion.spaces.latents import LatentSpace
    from diffusion.training.runtime import Processes

    vae = OmegaConf.merge(teacher.config.vae, {"ckpt": str(asked or reference["path"])})
    with_vae = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # not struct: the teacher's vae keys
    with_vae.vae = vae
    space = LatentSpace.for_training(with_vae, dataset, device, Processes())
    if space.reference["fingerprint"] != reference["fingerprint"]:
        raise UserError(f"teacher={cfg.teacher} denoises the latents of autoencoder {reference['path']} "
                        f"({reference['fingerprint']}); vae.ckpt={asked} is another ({space.reference['fingerprint']}): "
                        f"drop vae.ckpt (the student works in its teacher's latent space)")
    return space


def student_config(cfg, teacher, sampler_node: dict) -> str:
    """The student's stored config: the teacher's (network, text, objective, schedule, space), this run's training
    keys, `task: distill`, `teacher` and the consistency sampler."""
    mine = OmegaConf.to_container(cfg, resolve=True)
    keep = ("task", "teacher", "distill", "seed", "device", "resume", "paths", "trainer", "optim", "logger", "cost",
            "dataset")
    student = OmegaConf.merge(teacher.config, {key: mine[key] for key in keep if key in mine})
    student.sampler = sampler_node
    student.teacher = str(Path(str(cfg.teacher)).resolve())
    return OmegaConf.to_yaml(student, resolve=True)


# ---------------------------------------------------------------------------------------------- the loop


def distill(cfg, device: torch.device) -> Path:
    validate(cfg)
    trainer, d = cfg.trainer, cfg.distill
    run_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = run_dir / "checkpoints"
    teacher = open_teacher(cfg, device)
    resumed = resolve_resume(cfg, run_dir, kind="diffusion")
    if resumed and resumed.get("target") is None:
        raise UserError(f"resume={resumed['_path']} is not a distillation checkpoint (no EMA target network); resume a "
                        f"task=distill run, or start a fresh one")

    dataset = build_dataset(cfg, "train")
    space = distillation_space(cfg, teacher, dataset, device)
    objective = teacher.objective
    solver = solver_node(cfg, teacher)
    node = student_sampler_node(cfg, solver)
    sampler = build_sampler(node, objective, bounded=space.bounded)  # the student's f, grid and sampling
    teacher_solver = build_sampler(solver, objective, bounded=space.bounded)  # the teacher's ODE step
    grid = sampler.training_grid() + [sampler.final_level]  # N levels, then the clean level (the boundary)
    config_yaml = student_config(cfg, teacher, node)

    # student (from the teacher's EMA weights), EMA target, EMA for sampling, optimizer
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    teacher.model.to(memory_format=memory_format)
    student = copy.deepcopy(teacher.model).train()
    student.requires_grad_(False)
    student.denoiser.requires_grad_(True)  # the text encoder stays the teacher's (LCM freezes it too)
    target = EMA(student, d.target_decay, warmup=False)
    ema = EMA(student, trainer.ema_decay, trainer.ema_warmup)
    optimizer = make_optimizer(student.denoiser.parameters(), cfg.optim, device)
    start_step, samples_seen, trained_before = 0, 0, 0.0
    if resumed:
        student.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        target.load_state_dict(resumed["target"])
        optimizer.load_state_dict(resumed["optimizer"])
        restore_rng(resumed.get("rng"))
        start_step, samples_seen = int(resumed["step"]), int(resumed.get("samples_seen", 0))
        trained_before = float(resumed.get("train_seconds", 0.0))

    def group_losses(batch, step: int) -> torch.Tensor:
        """The per-example loss of a batch: level_groups groups, each at its own grid index."""
        x0 = batch["image"].to(device).contiguous(memory_format=memory_format)
        generator = step_generator(cfg.seed, step, 0, torch.device("cpu"))
        with torch.no_grad():
            cond = teacher.model.encode(list(batch["text"]), batch["label"], device=device)
            uncond = teacher.model.encode([""] * len(x0), torch.full_like(batch["label"], -1), device=device)
        losses = []
        for rows in torch.arange(len(x0)).tensor_split(min(d.level_groups, len(x0))):
            n = int(torch.randint(0, d.grid_points, (), generator=generator))
            level, level_next = grid[n], grid[min(n + d.skip, d.grid_points)]
            noise = torch.randn(x0[rows].shape, generator=generator).to(device).contiguous(memory_format=memory_format)
            losses.append(consistency_loss(student, target.model, teacher.model, sampler, teacher_solver, x0[rows],
                                           cond[rows], uncond[rows], level, level_next, noise,
                                           float(d.guidance_scale), d.distance, float(d.huber_c)))
        return torch.cat(losses)

    stream = space.batches(batch_stream(space.training_data(dataset), trainer.batch_size, cfg.seed, samples_seen, 0, 1,
                                        trainer.num_workers, device.type == "cuda"))
    probe_batch = next(space.batches(batch_stream(space.training_data(dataset), 2, cfg.seed, 0, 0, 1, 0, False)))
    flops, _ = count_flops(lambda: group_losses(probe_batch, 0).mean().backward())
    optimizer.zero_grad(set_to_none=True)
    cost = RunCost(flops / 2, device, 1, cfg.get("cost", {}).get("power_watts"), resumed.get("cost") if resumed else None)
    logger = MetricsLogger(run_dir, cfg)
    if resumed:
        logger.resume_at(start_step)
    prompts = fixed_prompts(dataset, int(trainer.sample_num))
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temporaries(checkpoint_dir)
    print(f"distilling {count_parameters(student.denoiser) / 1e6:.2f}M-parameter {type(student.denoiser).__name__} "
          f"from {cfg.teacher} ({objective.name}, {sampler.solver_name} over a {d.grid_points}-point grid, skip "
          f"{d.skip}, guidance {d.guidance_scale}) on {type(dataset).__name__} at {dataset.resolution}px "
          f"({space.name}) on {device}; run: {run_dir}")

    def save(step: int, periodic: bool) -> Path:
        payload = {"kind": "diffusion", "step": step, "model": student.state_dict(), "ema": ema.state_dict(),
                   "target": target.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                   "tokenizer": teacher.payload.get("tokenizer"), "config": config_yaml, "data": teacher.payload["data"],
                   "autoencoder": teacher.payload.get("autoencoder"), "world_size": 1, "samples_seen": samples_seen,
                   "train_seconds": trained_before + time.time() - start_time, "cost": cost.totals(samples_seen),
                   "teacher": {"path": str(Path(str(cfg.teacher)).resolve()),
                               "fingerprint": ckpt.weights_fingerprint(teacher.payload["ema"])}}
        if periodic:
            ckpt.save_checkpoint(payload, checkpoint_dir / f"step_{step:07d}.ckpt")
            ckpt.prune_checkpoints(checkpoint_dir, trainer.keep_last)
        return ckpt.save_checkpoint(payload, checkpoint_dir / "last.ckpt")

    def draw(step: int) -> Path:
        from diffusion.data.images import image_grid, save_png
        from diffusion.pipeline import generate_images

        ema.model.eval()
        images = generate_images(ema.model, sampler, prompts, list(range(len(prompts))), shape=tuple(space.info["shape"]),
                                 steps=GRID_SAMPLE_STEPS, guidance_scale=1.0, decode=space.decode, device=device)
        path = run_dir / "samples" / f"step_{step:07d}.png"
        save_png(image_grid(images), path, {"step": step, "prompts": prompts, "steps": GRID_SAMPLE_STEPS})
        return path

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    loss_sum = torch.zeros((), device=device)
    start_time, last_good = time.time(), None
    last_log_time, last_log_step = start_time, start_step
    step, stopping = start_step, False
    fit_to_time = bool(trainer.get("fit_schedule_to_time", False))
    bar = tqdm(total=trainer.max_steps, initial=start_step, desc="distilling", unit="step", dynamic_ncols=True)
    with GracefulStop() as stop, bar:
        while step < trainer.max_steps:
            spent = trained_before + time.time() - start_time  # with fit_schedule_to_time the lr decay spans max_minutes
            lr = lr_at(step, trainer.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay, cfg.optim.min_lr_ratio,
                       time_progress=spent / (60 * trainer.max_minutes) if fit_to_time else 0.0)
            set_lr(optimizer, lr)
            loss = torch.zeros((), device=device)
            for micro in range(trainer.grad_accum):
                micro_loss = group_losses(next(stream), step * trainer.grad_accum + micro).mean()
                (micro_loss / trainer.grad_accum).backward()
                loss = loss + micro_loss.detach() / trainer.grad_accum
            if trainer.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(student.denoiser.parameters(), trainer.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            target.update(student, step)  # theta- <- mu theta- + (1 - mu) theta (Song et al. 2023, Alg. 2)
            ema.update(student, step)
            loss_sum += loss
            nonfinite |= ~torch.isfinite(loss)
            step += 1
            samples_seen += trainer.batch_size * trainer.grad_accum
            bar.update(1)

            spent = trained_before + time.time() - start_time
            budget_used = spent if fit_to_time else time.time() - start_time  # fitted to time: the budget spans resumes
            out_of_time = trainer.max_minutes is not None and budget_used > 60 * trainer.max_minutes
            stopping = stop.requested or out_of_time
            finishing = step == trainer.max_steps or stopping
            if step % trainer.log_every == 0 or finishing:
                if bool(nonfinite):
                    raise diverged(step, last_good)
                elapsed = time.time() - last_log_time
                totals = cost.totals(samples_seen)
                values = {"loss": loss_sum.item() / (step - last_log_step), "lr": lr,
                          "images_per_s": (step - last_log_step) * trainer.batch_size * trainer.grad_accum / max(elapsed, 1e-9),
                          "elapsed_s": round(time.time() - start_time, 2), "train_flops": totals["train_flops"],
                          "images_seen": totals["images_seen"], "device_s": round(totals["device_seconds"], 2),
                          "energy_j": round(totals["energy_j"], 2)}
                logger.log(step, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.1e}")
                loss_sum.zero_()
                last_log_time, last_log_step = time.time(), step
            if not finishing and trainer.checkpoint_every and step % trainer.checkpoint_every == 0:
                last_good = (save(step, periodic=True), step)
            if not finishing and trainer.sample_every and step % trainer.sample_every == 0:
                logger.log_image(step, "samples", draw(step))
            if stopping:
                reason = f"signal {stop.signal_name}" if stop.requested else f"trainer.max_minutes={trainer.max_minutes}"
                bar.write(f"stopping at step {step} ({reason}); checkpoint saved, continue with resume=auto", file=sys.stderr)
                break
    final = save(step, periodic=False)
    if not stop.requested:
        logger.log_image(step, "samples", draw(step))
    print(f"checkpoint: {final}")
    print(RunCost.line(cost.totals(samples_seen)))
    logger.close()
    return final
