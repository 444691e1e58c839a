"""The toy-birds attribute probe: a small CNN that reads every attribute back from an image.

Because every toy-birds image is drawn from known attributes, a classifier trained on fresh
renders measures prompt adherence of a generated image: `score` compares its predictions with
the attributes a prompt mentioned. `features` (the penultimate layer) serves as a cheap
embedding for FID-style distances on toy-birds.

    python -m diffusion.evaluation.probe --resolution 32

trains one (a few minutes on a laptop CPU at 32 px), prints its held-out accuracy per attribute
and caches it; `load_probe(resolution)` loads it (training first if needed).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from diffusion.data.cache import save_atomic
from diffusion.data.toybirds import ATTRIBUTES, RENDERER_VERSION, ToyBirds
from diffusion.errors import UserError

PROBE_FORMAT_VERSION = 1
TRAIN_SEED = 1234  # probe training images come from their own seed, never a dataset's default
HELD_OUT_IMAGES = 4000  # test-split renders used for the accuracy it reports
# Every attribute reads at 32 px (measured >= 99.9%), so larger images are shrunk to this
# inside the probe: a 64 px probe trains about as fast as a 32 px one.
WORKING_RESOLUTION = 32


def _conv(channels_in, channels_out, stride):
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class AttributeProbe(nn.Module):
    """Convolutions down to a 4x4 map, one shared feature layer, one linear head per attribute.

    The 4x4 map is flattened rather than averaged, so where things are (bird height for the
    pose, extent for the size, which side the beak is on) stays readable. `resolution` is the
    size of the images it reads; above WORKING_RESOLUTION they are shrunk (anti-aliased) first.
    """

    def __init__(self, resolution: int, width: int = 24, feature_dim: int = 128):
        super().__init__()
        self.resolution = resolution
        self.width = width
        self.feature_dim = feature_dim
        self.trunk = nn.Sequential(
            _conv(3, width, 1),                    # (B, w, R, R)
            _conv(width, 2 * width, 2),            # (B, 2w, R/2, R/2)
            _conv(2 * width, 2 * width, 1),
            _conv(2 * width, 4 * width, 2),        # (B, 4w, R/4, R/4)
            _conv(4 * width, 4 * width, 1),
            _conv(4 * width, 128, 2),              # (B, 128, R/8, R/8)
            nn.AdaptiveAvgPool2d(4),               # (B, 128, 4, 4) at any resolution
            nn.Flatten(),
            nn.Linear(128 * 16, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values))
                                    for name, values in ATTRIBUTES.items()})
        self.held_out_accuracy: dict[str, float] | None = None  # set once trained or loaded

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > WORKING_RESOLUTION:
            images = F.interpolate(images, size=(WORKING_RESOLUTION,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False)
        return self.trunk(images)  # (B, feature_dim)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}  # name -> (B, classes)


# ---- training ----

def render_batch(dataset: ToyBirds, indices) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [B, 3, R, R] in [-1, 1] and integer labels per attribute for dataset items."""
    images = torch.stack([dataset.image(i) for i in indices]).float() / 127.5 - 1.0
    attributes = [dataset.attributes(i) for i in indices]
    labels = {name: torch.tensor([ATTRIBUTES[name].index(a[name]) for a in attributes])
              for name in ATTRIBUTES}
    return images, labels


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild damage of the kind a diffusion model's samples show: noise, blur, colour drift and
    one-pixel shifts. Never a horizontal flip: that would change the facing label."""
    batch = images.shape[0]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(batch, *shape, generator=generator)

    # Blur half the batch with a 3x3 kernel of random strength (0 = none).
    strength = uniform(0, 0.6, 1, 1, 1) * (torch.rand(batch, 1, 1, 1, generator=generator) < 0.5)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = images + strength * (blurred - images)
    images = images * uniform(0.9, 1.1, 1, 1, 1) + uniform(-0.06, 0.06, 3, 1, 1)
    images = images + uniform(0, 0.08, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    # Shift by up to one pixel each way (replicate the edge, so no black border appears).
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    size = images.shape[-1]
    return padded[:, :, 1 + dy:1 + dy + size, 1 + dx:1 + dx + size].clamp(-1.2, 1.2)


def default_steps(resolution: int) -> int:
    # Measured: 1000 steps of 128 fresh birds give >= 99.9% on every attribute at 32 px.
    return 1000


def train_probe(
    resolution: int = 32,
    steps: int | None = None,       # None: default_steps(resolution)
    batch_size: int = 128,
    learning_rate: float = 3e-3,    # AdamW with cosine decay; BatchNorm keeps this stable
    seed: int = 0,
    held_out_images: int = HELD_OUT_IMAGES,
    progress: bool = True,
    device: str | None = None,      # None: CUDA when available (rendering stays on the CPU)
) -> tuple[AttributeProbe, dict[str, float]]:
    """Train a probe on an unlimited stream of fresh renders; return it and its held-out accuracy."""
    steps = default_steps(resolution) if steps is None else steps
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    stream = ToyBirds(split="train", resolution=resolution, seed=TRAIN_SEED + seed)
    probe = AttributeProbe(resolution).to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))))
    probe.train()
    bar = tqdm(range(steps), desc=f"probe {resolution}px", disable=not progress, unit="step")
    for step in bar:
        # Every step sees new birds: item indices never repeat within UNLIMITED_LENGTH.
        start = (step * batch_size) % (len(stream) - batch_size)
        images, labels = render_batch(stream, range(start, start + batch_size))
        images = augment(images, generator).to(device).contiguous(memory_format=torch.channels_last)
        logits = probe(images)
        loss = sum(F.cross_entropy(logits[name], labels[name].to(device)) for name in ATTRIBUTES)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    probe.eval()
    return probe.cpu(), evaluate(probe.cpu(), held_out_images)


@torch.no_grad()
def evaluate(probe: AttributeProbe, num_images: int = HELD_OUT_IMAGES, seed: int = 0) -> dict[str, float]:
    """Accuracy per attribute on the first `num_images` of the toy-birds test split."""
    held_out = ToyBirds(split="test", resolution=probe.resolution, num_images=num_images,
                        seed=seed, cache=False)
    correct = {name: 0 for name in ATTRIBUTES}
    for start in range(0, num_images, 500):
        images, labels = render_batch(held_out, range(start, min(start + 500, num_images)))
        predicted = _logits(probe, images)
        for name in ATTRIBUTES:
            correct[name] += int((predicted[name].argmax(1) == labels[name]).sum())
    return {name: count / num_images for name, count in correct.items()}


# ---- saving and loading ----

def default_cache_dir() -> Path:
    base = os.environ.get("DIFFUSION_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "diffusion-from-scratch") / "probes"


def probe_path(resolution: int, cache_dir=None) -> Path:
    # The renderer version is in the name: a changed drawing never meets an old probe.
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"toybirds-probe-r{resolution}-renderer{RENDERER_VERSION}.pt"


def save_probe(probe: AttributeProbe, accuracy: dict[str, float], path: Path) -> None:
    """One file of tensors and plain values, written atomically."""
    save_atomic({
        "format_version": PROBE_FORMAT_VERSION,
        "renderer_version": RENDERER_VERSION,
        "resolution": probe.resolution,
        "width": probe.width,
        "feature_dim": probe.feature_dim,
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
        "held_out_accuracy": dict(accuracy),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()},
    }, Path(path))


def read_probe(path: Path) -> AttributeProbe:
    """A probe from a file written by `save_probe`; refuses files from another renderer."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot read probe {path} ({error}); delete it to retrain") from None
    if (not isinstance(contents, dict) or contents.get("format_version") != PROBE_FORMAT_VERSION
            or contents.get("renderer_version") != RENDERER_VERSION
            or contents.get("attributes") != {k: list(v) for k, v in ATTRIBUTES.items()}):
        raise UserError(f"probe {path} was made for another toy-birds renderer; delete it to retrain")
    probe = AttributeProbe(contents["resolution"], contents["width"], contents["feature_dim"])
    probe.load_state_dict(contents["state_dict"])
    probe.held_out_accuracy = contents["held_out_accuracy"]
    return probe.eval()


def load_probe(resolution: int = 32, train_if_missing: bool = True, cache_dir=None) -> AttributeProbe:
    """The cached probe for `resolution`, trained (and cached) first when missing."""
    path = probe_path(resolution, cache_dir)
    if path.is_file():
        return read_probe(path)
    if not train_if_missing:
        raise UserError(f"no toy-birds probe at {path}; run "
                        f"`python -m diffusion.evaluation.probe --resolution {resolution}`")
    probe, accuracy = train_probe(resolution)
    save_probe(probe, accuracy, path)
    probe.held_out_accuracy = accuracy
    return probe


# ---- using a trained probe ----

def _batches(probe: AttributeProbe, images: torch.Tensor, batch_size: int = 500):
    """Images in [-1, 1] in chunks on the probe's device, resized to its resolution if needed."""
    probe.eval()
    device = next(probe.parameters()).device
    for chunk in images.split(batch_size):
        chunk = chunk.to(device, torch.float32)
        if tuple(chunk.shape[-2:]) != (probe.resolution, probe.resolution):
            chunk = F.interpolate(chunk, size=(probe.resolution,) * 2, mode="bilinear",
                                  antialias=True, align_corners=False)
        yield chunk.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _logits(probe: AttributeProbe, images: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = [probe(chunk) for chunk in _batches(probe, images)]
    return {name: torch.cat([o[name] for o in outputs]).cpu() for name in ATTRIBUTES}


def predict(probe: AttributeProbe, images: torch.Tensor) -> list[dict[str, str]]:
    """The probe's reading of each image [N, 3, H, W] in [-1, 1]: attribute name -> value."""
    logits = _logits(probe, images)
    indices = {name: logits[name].argmax(1).tolist() for name in ATTRIBUTES}
    return [{name: ATTRIBUTES[name][indices[name][i]] for name in ATTRIBUTES}
            for i in range(images.shape[0])]


def score(probe: AttributeProbe, images: torch.Tensor, prompted: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose prediction matches the prompt, counting only
    the images whose prompt mentioned that attribute (e.g. from `parse_prompt`)."""
    if len(prompted) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompted)} prompted attribute dicts")
    predictions = predict(probe, images)
    hits, counts = {}, {}
    for wanted, got in zip(prompted, predictions):
        for name, value in wanted.items():
            counts[name] = counts.get(name, 0) + 1
            hits[name] = hits.get(name, 0) + int(got[name] == value)
    return {name: hits[name] / counts[name] for name in ATTRIBUTES if name in counts}


@torch.no_grad()
def features(probe: AttributeProbe, images: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features [N, feature_dim] (for FID-style distances on toy-birds)."""
    return torch.cat([probe.features(chunk).cpu() for chunk in _batches(probe, images)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation.probe",
                                     description="Train and cache the toy-birds attribute probe.")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: measured per resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--retrain", action="store_true", help="replace a cached probe")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    from diffusion.schema import ProbeArgs, flag, validate

    validate(ProbeArgs, vars(args), name=flag)  # every argument, before a probe trains or is cached
    path = probe_path(args.resolution, args.cache_dir)
    if path.is_file() and not args.retrain:
        probe = read_probe(path)
        accuracy = probe.held_out_accuracy
        print(f"cached probe {path} (pass --retrain to train again)")
    else:
        began = time.perf_counter()
        probe, accuracy = train_probe(args.resolution, args.steps, seed=args.seed, device=args.device)
        save_probe(probe, accuracy, path)
        print(f"trained in {time.perf_counter() - began:.0f} s; saved {path}")
    print(f"held-out accuracy ({HELD_OUT_IMAGES} test-split images at {args.resolution} px):")
    for name, value in accuracy.items():
        print(f"  {name:12s} {100 * value:6.2f}%")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
