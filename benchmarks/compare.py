"""Rows that put our UNet beside diffusers' on the same work: training step, guided DDIM sampling, FLOPs.

Every compared row holds `ours`, `reference` and `ratio`, oriented so that above 1.0 means ours is
better (ours / reference for images/s; reference / ours for memory and FLOPs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.settings import Settings
from benchmarks.setups import FORWARD, Inputs, Pair, make_inputs
from benchmarks.timing import Stopwatch, interleaved, median, peak_flops, spread
from diffusion.conditioning import Cond
from diffusion.guidance import classifier_free_guidance
from diffusion.noise_schedules import NoiseSchedule
from diffusion.objectives import DDPMObjective
from diffusion.samplers import DDIMSampler, sample_loop
from diffusion.training.optim import make_optimizer
from diffusion.training.runtime import autocast

SIDES = ("ours", "reference")


def compared(row: str, model: str, unit: str, ours: float, reference: float, higher_is_better: bool, **extra) -> dict:
    ratio = ours / reference if higher_is_better else reference / ours
    return {"row": row, "model": model, "unit": unit, "ours": ours, "reference": reference, "ratio": round(ratio, 4), **extra}


def optimizer_for(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Our trainer's AdamW for both sides: fused on CUDA (optim.fused=auto), the for-each kernel on CPU."""
    config = {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "fused": "auto"}
    return make_optimizer(model.parameters(), OmegaConf.create(config), device)


def training_step(model, forward, inputs: Inputs, optimizer, settings: Settings):
    """forward -> MSE loss -> backward -> AdamW step, as one callable."""

    def step():
        with autocast(settings.device, settings.precision):
            output = forward(model, inputs)
        loss = F.mse_loss(output.float(), inputs.target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------------------------------------- training


def train_row(pair: Pair, settings: Settings, flops: dict | None = None) -> dict:
    inputs = make_inputs(pair, settings.train_batch, settings.resolution, context_length=settings.context_length,
                         device=settings.device, memory_format=settings.torch_memory_format)
    steps = {}
    for side in SIDES:
        model = getattr(pair, side).train()
        steps[side] = training_step(model, FORWARD[side], inputs, optimizer_for(model, settings.device), settings)
    seconds = interleaved(steps, settings.repeats, settings.warmup, settings.device)
    rate = {side: settings.train_batch / median(seconds[side]) for side in SIDES}
    row = compared("train", pair.name, "images/s", rate["ours"], rate["reference"], True, batch=settings.train_batch,
                   seconds=seconds, spread={side: round(spread(seconds[side]), 3) for side in SIDES})
    add_utilisation(row, rate, flops, "train_per_image", settings)
    return row


# ---------------------------------------------------------------------------------------------- sampling


def sampling_inputs(pair: Pair, settings: Settings, in_channels: int = 3) -> tuple[Inputs, Inputs | None]:
    """Start noise and prompts for `sample_batch` images, and the unconditional prompts for guidance (the empty
    prompt, <bos> <eos>: two real tokens, padded to the same length)."""
    batch = settings.sample_batch
    cond = make_inputs(pair, batch, settings.resolution, in_channels, settings.context_length, settings.device,
                       settings.torch_memory_format, seed=1)
    if not pair.conditional:
        return cond, None
    generator = torch.Generator().manual_seed(2)
    mask = torch.zeros(batch, settings.context_length, dtype=torch.bool)
    mask[:, :2] = True
    uncond = Inputs(x=cond.x, t=cond.t, context=torch.randn(cond.context.shape, generator=generator).to(settings.device),
                    mask=mask.to(settings.device), pooled=torch.randn(cond.pooled.shape, generator=generator).to(settings.device))
    return cond, uncond


def ours_sampler(unet, cond: Inputs, uncond: Inputs | None, settings: Settings):
    """Our sample_loop + DDIMSampler + classifier_free_guidance (one batched forward of [uncond; cond])."""
    sampler = DDIMSampler(DDPMObjective(NoiseSchedule.from_name("linear"), "epsilon"), timestep_spacing="leading")
    timesteps = sampler.levels(settings.sample_steps)

    def run(network=unet):
        if uncond is None:
            denoise = lambda x_t, t: network(x_t, t)  # noqa: E731  (unconditional: no guidance)
        else:
            as_cond = [Cond(context=i.context, context_mask=i.mask, pooled=i.pooled) for i in (cond, uncond)]
            denoise = classifier_free_guidance(network, as_cond[0], as_cond[1], settings.guidance_scale)
        with autocast(settings.device, settings.precision):
            return sample_loop(sampler, denoise, cond.x.clone(), timesteps)

    return run


def reference_sampler(unet, cond: Inputs, uncond: Inputs | None, settings: Settings):
    """diffusers' DDIMScheduler and its UNet in the standard guided loop (as in its text-to-image pipelines)."""
    from diffusers import DDIMScheduler as ReferenceDDIM

    scheduler = ReferenceDDIM(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="leading", prediction_type="epsilon")
    scale = settings.guidance_scale
    if uncond is not None:
        context = torch.cat([uncond.context, cond.context])
        mask, pooled = torch.cat([uncond.mask, cond.mask]), torch.cat([uncond.pooled, cond.pooled])

    @torch.no_grad()
    def run(network=unet):
        scheduler.set_timesteps(settings.sample_steps, device=settings.device)
        latents = cond.x.clone()
        with autocast(settings.device, settings.precision):
            for t in scheduler.timesteps:
                if uncond is None:
                    noise_pred = network(scheduler.scale_model_input(latents, t), t).sample
                else:
                    model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                    out = network(model_input, t, encoder_hidden_states=context, class_labels=pooled,
                                  encoder_attention_mask=mask).sample
                    out_uncond, out_cond = out.chunk(2)
                    noise_pred = out_uncond + scale * (out_cond - out_uncond)
                latents = scheduler.step(noise_pred, t, latents).prev_sample
        return latents

    return run


def sample_row(pair: Pair, settings: Settings, flops: dict | None = None) -> dict:
    """Guided DDIM sampling, and the sampler overhead: the share of a run spent outside the network's forward
    calls (the UNet wrapped in a stopwatch). On a CPU the stopwatch costs nothing, so it rides along in the
    timed runs; on CUDA it synchronises, so it gets separate runs and the timed ones stay unsynchronised."""
    cond, uncond = sampling_inputs(pair, settings)
    watches = {side: Stopwatch(getattr(pair, side).eval(), settings.device) for side in SIDES}
    instrument = settings.device.type == "cpu"
    samplers = {"ours": ours_sampler, "reference": reference_sampler}
    runs = {side: samplers[side](watches[side] if instrument else getattr(pair, side), cond, uncond, settings) for side in SIDES}
    interleaved(runs, 0, 1, settings.device)  # warm-up: one whole sampling run per side is enough
    for watch in watches.values():
        watch.seconds = 0.0
    seconds = interleaved(runs, settings.sample_repeats or settings.repeats, 0, settings.device)
    rate = {side: settings.sample_batch / median(seconds[side]) for side in SIDES}
    if instrument:
        network = {side: watches[side].seconds for side in SIDES}
        total = {side: sum(seconds[side]) for side in SIDES}
    else:
        extra = {side: samplers[side](watches[side], cond, uncond, settings) for side in SIDES}
        total = {side: sum(interleaved({side: extra[side]}, 2, 0, settings.device)[side]) for side in SIDES}
        network = {side: watches[side].seconds for side in SIDES}
    overhead = {side: round(max(0.0, 1 - network[side] / total[side]), 5) for side in SIDES}
    row = compared("sample", pair.name, "images/s", rate["ours"], rate["reference"], True,
                   batch=settings.sample_batch, steps=settings.sample_steps,
                   guidance_scale=settings.guidance_scale if pair.conditional else None,
                   network_batch=settings.sample_batch * (2 if pair.conditional else 1),
                   sampler_overhead=overhead, seconds=seconds,
                   spread={side: round(spread(seconds[side]), 3) for side in SIDES})
    add_utilisation(row, rate, flops, "sample_per_image", settings)
    return row


# ---------------------------------------------------------------------------------------------- FLOPs


def count_flops(function) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls, convolutions, attention). SDPA runs
    on its math backend here so that the CPU kernel, which the counter does not know, is counted too."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def flops_row(pair: Pair, settings: Settings, batch: int = 2) -> dict:
    """Forward and training (forward + backward, counted directly) FLOPs per image at the benchmark's resolution."""
    inputs = make_inputs(pair, batch, settings.resolution, context_length=settings.context_length, device=settings.device)
    counts = {}
    for side in SIDES:
        model, forward = getattr(pair, side), FORWARD[side]
        with torch.no_grad():
            forward_flops = count_flops(lambda: forward(model, inputs))
        train_flops = count_flops(lambda: F.mse_loss(forward(model, inputs), inputs.target).backward())
        model.zero_grad(set_to_none=True)
        counts[side] = {"forward_per_image": forward_flops / batch, "train_per_image": train_flops / batch}
    guided = 2 if pair.conditional else 1
    for side in SIDES:
        counts[side]["sample_per_image"] = counts[side]["forward_per_image"] * guided * settings.sample_steps
    row = compared("flops", pair.name, "GFLOP/image (forward)", counts["ours"]["forward_per_image"] / 1e9,
                   counts["reference"]["forward_per_image"] / 1e9, False,
                   train_gflop_per_image={side: counts[side]["train_per_image"] / 1e9 for side in SIDES},
                   train_to_forward={side: round(counts[side]["train_per_image"] / counts[side]["forward_per_image"], 3)
                                     for side in SIDES},
                   resolution=settings.resolution)
    row["counts"] = counts
    return row


def add_utilisation(row: dict, rate: dict, flops: dict | None, key: str, settings: Settings) -> None:
    """Model FLOP utilisation = achieved FLOP/s / the device's peak, where the peak is known (bf16 on GPUs)."""
    peak = peak_flops(settings.device, settings.precision)
    if flops is None or peak is None:
        return
    row["mfu"] = {side: round(rate[side] * flops["counts"][side][key] / peak[0], 4) for side in SIDES}
    row["peak_flops"] = {"value": peak[0], "source": peak[1]}
