"""Opening up a sampling run: the trajectory, cross-attention maps per prompt token, schedule plots.

    recorder = TrajectoryRecorder()
    images = generate_images(model, sampler, prompts, seeds, shape=..., steps=25, callback=recorder)
    render_trajectory(recorder, "trajectory.png")           # rows = steps: x_t and pred_x0

    maps = cross_attention_maps(model, "a red bird with blue wings", x_t, t=500)
    render_attention(maps, "attention.png", image=...)      # one panel per token

    plot_schedules("schedules.png")                          # alpha-bar and log-SNR of every conf/schedule

Figures are drawn with matplotlib's headless Agg backend.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusion.config import CONF_DIR
from diffusion.samplers import StepInfo



def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] (values outside are clipped) -> [H, W, 3] floats in [0, 1] for imshow."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def save_figure(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path


# ---------------------------------------------------------------------------------------------- trajectory


@dataclass
class TrajectoryStep:
    index: int
    t: int
    t_prev: int
    x_t: torch.Tensor  # [B, C, H, W] the sample the step started from
    pred_x0: torch.Tensor  # [B, C, H, W]
    pred_eps: torch.Tensor  # [B, C, H, W] the predicted noise


class TrajectoryRecorder:
    """A `callback` for `generate_images` / `sample_loop` that keeps x_t, pred_x0 and the predicted noise
    of every step (CPU copies; `images` keeps only some of the batch, to save memory on long runs)."""

    def __init__(self, images: list[int] | None = None):
        self.images = images
        self.steps: list[TrajectoryStep] = []

    def __call__(self, info: StepInfo) -> None:
        def keep(x):
            x = x.detach().float().cpu()
            return x[self.images] if self.images is not None else x.clone()

        self.steps.append(TrajectoryStep(info.index, int(info.level), int(info.level_next), keep(info.x),
                                         keep(info.pred_x0), keep(info.pred_eps)))

    def __len__(self) -> int:
        return len(self.steps)

    def stacked(self, name: str) -> torch.Tensor:
        """One field over the run: [steps, B, C, H, W]."""
        return torch.stack([getattr(step, name) for step in self.steps])

    @property
    def timesteps(self) -> list[int]:
        return [step.t for step in self.steps]


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), always the first and the last."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def render_trajectory(recorder: TrajectoryRecorder, path, decode=None, max_rows: int = 10, max_images: int = 4,
                      show_noise: bool = False) -> Path:
    """A PNG strip: one row per step (at most `max_rows`, spread over the run), and for each image the
    x_t the step started from and its pred_x0 (and the predicted noise with `show_noise`). `decode`
    maps latents to images for latent models."""
    plt = pyplot()
    decode = decode or (lambda x: x)
    rows = spread(len(recorder), max_rows)
    fields = ["x_t", "pred_x0"] + (["pred_eps"] if show_noise else [])
    images = min(max_images, recorder.steps[0].x_t.shape[0])
    columns = images * len(fields)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns, 1.5 * len(rows) + 0.3), squeeze=False)
    for r, s in enumerate(rows):
        step = recorder.steps[s]
        for i in range(images):
            for f, name in enumerate(fields):
                axis = axes[r][i * len(fields) + f]
                value = getattr(step, name)[i: i + 1]
                shown = value[0] / 3 if name == "pred_eps" else decode(value)[0]  # noise: +-3 sigma -> +-1
                axis.imshow(to_display(shown))
                axis.set_xticks([])
                axis.set_yticks([])
                if r == 0:
                    axis.set_title(f"{name} [{i}]", fontsize=8)
                if i == 0 and f == 0:
                    axis.set_ylabel(f"t={step.t}", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- cross-attention


def cross_attention_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """Every cross-attention module of the network (`TransformerBlock.cross_attn`), found by shape, not
    by class, so `diffusion/` still imports no network class."""
    return [(f"{name}.cross_attn", module.cross_attn) for name, module in model.named_modules()
            if hasattr(getattr(module, "cross_attn", None), "record_maps")]


@contextlib.contextmanager
def recording_attention(model):
    """Within the block, every cross-attention layer keeps its last probabilities in `last_maps`."""
    layers = cross_attention_layers(model)
    if not layers:
        raise ValueError("this model has no cross-attention layers (it is not text-conditional, or has no attention levels)")
    for _, layer in layers:
        layer.record_maps = True
    try:
        yield layers
    finally:
        for _, layer in layers:
            layer.record_maps, layer.last_maps = False, None


def average_maps(maps: list[torch.Tensor], resolution: int | None = None) -> torch.Tensor:
    """Per-layer maps [B, N=h*w, L] -> one map [B, L, r, r]: the mean over the layers at `resolution`
    (r = resolution), or with None over every layer, each resized (bilinear) to the largest. Both keep
    the sum over tokens at 1: resizing and averaging are convex combinations applied to every token alike."""
    grids = []
    for m in maps:
        side = math.isqrt(m.shape[1])
        grids.append(m.transpose(1, 2).reshape(m.shape[0], m.shape[2], side, side).float())  # (B, L, h, w)
    sides = sorted({g.shape[-1] for g in grids})
    if resolution is not None:
        grids = [g for g in grids if g.shape[-1] == resolution]
        if not grids:
            raise ValueError(f"no cross-attention layer works at {resolution}x{resolution}; available: {sides}")
    size = max(g.shape[-1] for g in grids)
    resized = [g if g.shape[-1] == size else F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)
               for g in grids]
    return torch.stack(resized).mean(0)


def prompt_tokens(model, prompt: str) -> list[str]:
    """The tokens the text encoder makes of `prompt`, as strings (special tokens included)."""
    tokenizer = model.text.tokenizer
    if hasattr(tokenizer, "encode_one"):  # the project's word tokenizer
        return [tokenizer.vocabulary[i] for i in tokenizer.encode_one(prompt)]
    if hasattr(tokenizer, "dropped"):  # CLIP's BPE (Stable Diffusion): all 77 positions, padding included, as SD's
        ids = tokenizer([prompt])[0][0]  # UNet attends to every one of them
        return [tokenizer.tokens[i] if i in (tokenizer.start_id, tokenizer.end_id) else tokenizer.decode([i]) for i in ids]
    ids = tokenizer(prompt, truncation=True, max_length=getattr(model.text, "max_length", 64))["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)  # a Hugging Face tokenizer (text=minilm)


@dataclass
class AttentionMaps:
    maps: torch.Tensor  # [L, r, r] for the real tokens of one prompt; sums to 1 over L at every position
    tokens: list[str]  # L strings
    t: int
    resolution: int  # r


@torch.no_grad()
def cross_attention_maps(model, prompt: str, x_t: torch.Tensor, t: int, resolution: int | None = None) -> AttentionMaps:
    """Per-token cross-attention of one denoising call model(x_t, t, prompt), averaged over layers.

    x_t: [1, C, H, W] (e.g. a noised image: `schedule.add_noise(x0, noise, t)`). Padding tokens are
    masked in the softmax, so the maps of the real tokens sum to 1 at every position."""
    device = x_t.device
    cond = model.encode([prompt], device=device)
    with recording_attention(model) as layers:
        model(x_t, torch.full((x_t.shape[0],), int(t), device=device), cond)
        maps = [layer.last_maps for _, layer in layers]
    averaged = average_maps(maps, resolution)[0]  # (L, r, r)
    real = cond.context_mask[0].cpu()
    return AttentionMaps(averaged[real].cpu(), prompt_tokens(model, prompt)[: int(real.sum())], int(t), averaged.shape[-1])


class AttentionRecorder:
    """A sampling `callback` that keeps the per-token maps of every step (the conditional half when
    guidance batches [uncond; cond]). Use as a context manager around the sampling call:

        with AttentionRecorder(model) as attention:
            generate_images(..., callback=attention)
        attention.steps[i]  # (t, maps [B, L, r, r])
    """

    def __init__(self, model, resolution: int | None = None):
        self.model, self.resolution = model, resolution
        self.steps: list[tuple[int, torch.Tensor]] = []
        self._context = None

    def __enter__(self):
        self._context = recording_attention(self.model)
        self.layers = self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def __call__(self, info: StepInfo) -> None:
        batch = info.x.shape[0]
        maps = [layer.last_maps[-batch:] for _, layer in self.layers]  # guidance: [uncond; cond] -> cond
        self.steps.append((int(info.level), average_maps(maps, self.resolution).cpu()))


def render_attention(maps: AttentionMaps, path, image: torch.Tensor | None = None, skip_special: bool = True,
                     per_row: int = 8) -> Path:
    """A PNG with one heat-map panel per token (the word as its title), `per_row` panels a row; with `image`
    ([3, H, W] in [-1, 1]) it is shown first and under every map. Each panel's colours span its own range
    (where a word looks, not how much: compare magnitudes with `maps.maps` itself)."""
    plt = pyplot()
    keep = [i for i, token in enumerate(maps.tokens) if not (skip_special and token.startswith(("<", "[")))]
    panels = [None] * (image is not None) + keep  # None: the image itself
    rows = math.ceil(len(panels) / per_row)
    columns = min(per_row, len(panels))
    figure, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.9 * rows + 0.3), squeeze=False)
    size = image.shape[-1] if image is not None else maps.resolution
    upsampled = F.interpolate(maps.maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k >= len(panels):
            continue
        if image is not None:
            axis.imshow(to_display(image))
        if panels[k] is None:
            axis.set_title("image", fontsize=9)
            continue
        axis.imshow(upsampled[panels[k]].numpy(), cmap="inferno", alpha=0.65 if image is not None else 1.0)
        axis.set_title(maps.tokens[panels[k]], fontsize=9)
    figure.suptitle(f"cross-attention at t={maps.t} ({maps.resolution}x{maps.resolution})", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def save_grid(images: torch.Tensor, path, columns: int | None = None, scale: int = 4) -> Path:
    """An image grid ([N, 3, H, W] in [-1, 1]) enlarged `scale` times with nearest-neighbour (small images stay
    readable), saved as PNG."""
    from PIL import Image

    from diffusion.data.images import image_grid

    grid = image_grid(images.clamp(-1, 1), columns=columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)
    return path


# ---------------------------------------------------------------------------------------------- schedules


def schedule_configs(conf_dir=None) -> dict[str, dict]:
    """name -> the keyword arguments of NoiseSchedule.from_name, for every conf/schedule/*.yaml."""
    from omegaconf import OmegaConf

    folder = Path(conf_dir or CONF_DIR / "schedule")
    return {p.stem: dict(OmegaConf.to_container(OmegaConf.load(p))) for p in sorted(folder.glob("*.yaml"))}


def plot_schedules(path, conf_dir=None) -> Path:
    """alpha-bar and log-SNR against t for every schedule config, with (dashed) and without zero terminal SNR."""
    from diffusion.noise_schedules import NoiseSchedule

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, kwargs) in enumerate(schedule_configs(conf_dir).items()):
        for zero_terminal in (False, True):
            schedule = NoiseSchedule.from_name(**{**kwargs, "zero_terminal_snr": zero_terminal})
            t = np.arange(schedule.num_timesteps)
            alpha_bar = schedule.alphas_cumprod.numpy()
            with np.errstate(divide="ignore"):
                log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)  # -inf at a zero-SNR end: not drawn
            style = dict(color=colours[k % len(colours)], linestyle="--" if zero_terminal else "-",
                         label=f"{name}{' + zero-terminal-SNR' if zero_terminal else ''}")
            left.plot(t, alpha_bar, **style)
            right.plot(t, np.where(np.isfinite(log_snr), log_snr, np.nan), **style)
    left.set(xlabel="t", ylabel="alpha-bar_t", title="signal kept: alpha-bar")
    right.set(xlabel="t", ylabel="log SNR = log(alpha-bar / (1 - alpha-bar))", title="log signal-to-noise ratio")
    left.legend(fontsize=7)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)
