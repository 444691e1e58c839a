"""Rows about our own framework (no reference side): EMA update cost, the data pipeline, torch.compile,
and pixel vs latent diffusion. Each holds the two variants it compares and a `speedup` (the second
over the first, above 1.0 meaning the variant named second is faster)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.compare import optimizer_for, ours_sampler, sampling_inputs, training_step
from benchmarks.settings import Settings
from benchmarks.setups import FORWARD, Pair, build_ours, make_inputs
from benchmarks.timing import interleaved, median, synchronize
from diffusion.training.ema import EMA

VAE_CONF = Path(__file__).resolve().parents[1] / "conf" / "vae"


def variants(row: str, model: str, unit: str, first: str, second: str, values: dict, **extra) -> dict:
    return {"row": row, "model": model, "unit": unit, "variants": [first, second], first: values[first],
            second: values[second], "speedup": round(values[second] / values[first], 4), **extra}


# ---------------------------------------------------------------------------------------------- EMA


def ema_row(pair: Pair, settings: Settings, train_seconds: float | None) -> dict:
    """One EMA update of the UNet: the plain per-tensor loop vs torch._foreach_lerp_ (what training uses),
    in ms and as a share of the measured training step."""
    model = pair.ours
    plain, foreach = EMA(model, foreach=False), EMA(model, foreach=True)
    updates = {"plain_loop": lambda: plain.update(model, 1000), "foreach": lambda: foreach.update(model, 1000)}
    seconds = interleaved(updates, max(settings.repeats, 20), settings.warmup + 3, settings.device)
    ms = {name: median(values) * 1e3 for name, values in seconds.items()}
    row = variants("ema_update", pair.name, "ms per update", "plain_loop", "foreach", ms,
                   parameters=sum(p.numel() for p in model.parameters()),
                   tensors=sum(1 for _ in model.parameters()))
    # speedup here is a ratio of times, so flip it: plain / foreach
    row["speedup"] = round(ms["plain_loop"] / ms["foreach"], 4)
    if train_seconds:
        row["share_of_train_step"] = round(ms["foreach"] / (train_seconds * 1e3), 5)
        row["train_step_ms"] = round(train_seconds * 1e3, 2)
    return row


# ---------------------------------------------------------------------------------------------- data


def data_row(settings: Settings, train_images_per_s: float | None) -> dict:
    """toy-birds (the default: a freshly drawn bird per sample) through our DataLoader stream, 0 and 1 workers."""
    from diffusion.data.toybirds import ToyBirds
    from diffusion.training.data import batch_stream

    rate = {}
    for workers in (0, 1):
        dataset = ToyBirds(split="train", resolution=settings.resolution, num_images=None)
        stream = batch_stream(dataset, settings.train_batch, seed=0, start=0, rank=0, world_size=1,
                              num_workers=workers, pin_memory=settings.device.type == "cuda")
        next(stream)  # worker start-up is not throughput
        start = time.perf_counter()
        for _ in range(settings.data_batches):
            next(stream)
        rate[f"workers_{workers}"] = settings.data_batches * settings.train_batch / (time.perf_counter() - start)
        del stream
    row = variants("data", "toybirds", "images/s", "workers_0", "workers_1", rate, batch=settings.train_batch,
                   batches=settings.data_batches, resolution=settings.resolution)
    if train_images_per_s:
        row["train_images_per_s_tiny"] = train_images_per_s
    return row


# ---------------------------------------------------------------------------------------------- torch.compile


def compile_row(pair: Pair, settings: Settings) -> dict:
    """Our training step eager vs with torch.compile (trainer.compile=true), interleaved after compilation;
    `compile_seconds` is the first (compiling) step, with inductor's on-disk caches off."""
    inputs = make_inputs(pair, settings.train_batch, settings.resolution, context_length=settings.context_length,
                         device=settings.device, memory_format=settings.torch_memory_format)
    torch.manual_seed(0)
    eager_model = build_ours(pair.name, pair.context_dim).to(settings.device, memory_format=settings.torch_memory_format)
    compiled_model = build_ours(pair.name, pair.context_dim).to(settings.device, memory_format=settings.torch_memory_format)
    compiled_model.load_state_dict(eager_model.state_dict())
    compiled = torch.compile(compiled_model)
    steps = {"eager": training_step(eager_model.train(), FORWARD["ours"], inputs, optimizer_for(eager_model, settings.device), settings),
             "compiled": training_step(compiled.train(), FORWARD["ours"], inputs, optimizer_for(compiled_model, settings.device),
                                       settings)}
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    start = time.perf_counter()
    # compilation happens here; with the on-disk caches off, so that the time is a cold compile's
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        steps["compiled"]()
    synchronize(settings.device)
    compile_seconds = time.perf_counter() - start
    seconds = interleaved(steps, settings.repeats, settings.warmup, settings.device)
    rate = {name: settings.train_batch / median(values) for name, values in seconds.items()}
    return variants("compile", pair.name, "train images/s", "eager", "compiled", rate,
                    compile_seconds=round(compile_seconds, 1), batch=settings.train_batch, seconds=seconds)


# ---------------------------------------------------------------------------------------------- latent diffusion


def build_autoencoder(name: str = "kl_f4"):
    from models.vae import AutoencoderKL

    config = OmegaConf.to_container(OmegaConf.load(VAE_CONF / f"{name}.yaml"))
    accepted = inspect.signature(AutoencoderKL).parameters
    return AutoencoderKL(**{k: v for k, v in config.items() if k in accepted})


def latent_row(settings: Settings, model: str = "tiny", image_resolution: int = 64, vae: str = "kl_f4") -> dict:
    """Pixel vs latent diffusion for the same images: `model` on 3 x R x R pixels vs on the autoencoder's
    latents. Training reads cached latents (encoded once, as diffusion/latent_space.py does), so it times the
    UNet alone; sampling adds one decoder call per image. The one-time encoding cost is reported too."""
    autoencoder = build_autoencoder(vae).to(settings.device).eval()
    latent_side = image_resolution // autoencoder.downsampling
    spaces = {"pixels": (3, image_resolution), "latents": (autoencoder.latent_channels, latent_side)}
    train_steps, samplers = {}, {}
    for space, (channels, side) in spaces.items():
        space_settings = Settings(**{**settings.__dict__, "resolution": side})
        torch.manual_seed(0)
        net = build_ours(model, settings.context_dim, in_channels=channels).to(settings.device,
                                                                                memory_format=settings.torch_memory_format)
        pair = Pair(model, net, net, settings.context_dim)
        inputs = make_inputs(pair, settings.train_batch, side, channels, settings.context_length, settings.device,
                             settings.torch_memory_format)
        train_steps[space] = training_step(net, FORWARD["ours"], inputs, optimizer_for(net, settings.device), space_settings)
        cond, uncond = sampling_inputs(pair, space_settings, channels)
        sampler = ours_sampler(net, cond, uncond, space_settings)

        def sample(sampler=sampler, space=space, net=net):
            net.eval()
            with torch.no_grad():
                x = sampler()
                out = autoencoder.decode(x) if space == "latents" else x
            net.train()
            return out

        samplers[space] = sample
    seconds = interleaved(train_steps, settings.repeats, settings.warmup, settings.device)
    train_rate = {space: settings.train_batch / median(values) for space, values in seconds.items()}
    seconds = interleaved(samplers, settings.sample_repeats or settings.repeats, 1, settings.device)
    sample_rate = {space: settings.sample_batch / median(values) for space, values in seconds.items()}
    images = torch.randn(settings.train_batch, 3, image_resolution, image_resolution, device=settings.device)
    with torch.no_grad():
        encode_seconds = median(interleaved({"encode": lambda: autoencoder.encode(images).mode()}, settings.repeats, 1,
                                            settings.device)["encode"])
    row = variants("latent_vs_pixel", model, "train images/s", "pixels", "latents", train_rate,
                   image_resolution=image_resolution, latent_shape=[spaces["latents"][0], latent_side, latent_side],
                   autoencoder=vae, sample_images_per_s=sample_rate,
                   sample_speedup=round(sample_rate["latents"] / sample_rate["pixels"], 4),
                   encode_images_per_s=settings.train_batch / encode_seconds)
    return row
