"""Latent diffusion's space: the scaled latents of a trained autoencoder (Rombach et al. 2022).

    python train.py task=vae vae=kl_f4 dataset.resolution=64                      # 1. the autoencoder
    python train.py vae=kl_f4 vae.ckpt=<its last.ckpt> dataset.resolution=64    # 2. diffusion on its latents
    python sample.py ckpt=<the diffusion last.ckpt> prompt="a red bird"           # 3. sample, decoded to images

Training encodes the training images ONCE and caches, per image, the posterior mean (float32) and standard
deviation (float16) in `<vae.cache_dir or paths.data_dir/latents>/latents-<key>.pt`; every step then draws a
fresh latent from the cached posterior (mean + std * eps), scaled by the autoencoder's `scale_factor`. The
key hashes everything that changes the cached values: the autoencoder's weights fingerprint, the dataset
config and renderer version, the resolution, the number of images and the cache format. A dataset without a
fixed size (toy-birds with num_images=null) is encoded as its first `vae.cache_images` images: a fixed set
of latents is the point of the cache, and 10k distinct birds keep memorisation low for about two minutes of
encoding on a CPU (f4 at 64x64). Random flips (CUB, image folders) are drawn once, when the cache is built.

The diffusion checkpoint names its autoencoder under "autoencoder" (path, weights fingerprint, scale factor),
and sampling refuses any autoencoder whose weights do not match that fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusion.spaces.autoencoder import load_autoencoder, resolved
from diffusion.data.cache import FORMAT_VERSION as FILE_FORMAT_VERSION
from diffusion.data.cache import cache_key, load_cache, save_atomic
from diffusion.errors import UserError

CACHE_FORMAT_VERSION = 1  # bump when what is stored per image changes
DEFAULT_CACHE_IMAGES = 10000  # images encoded from a dataset without a fixed size, unless vae.cache_images says
ENCODE_BATCH = 64  # images per encoder call when building the cache
DATASET_KEYS_THAT_DO_NOT_CHANGE_IMAGES = ("cache", "cache_dir")


class LatentSpace:
    name = "latents"
    bounded = False  # scaled latents have unit std and no range: clamping pred_x0 to [-1, 1] would cut ~1/3 of them

    def __init__(self, autoencoder, reference: dict, seed: int = 0):
        self.autoencoder = autoencoder  # frozen, eval mode, on its device
        self.reference = reference  # plain dict, stored in the diffusion checkpoint under "autoencoder"
        self.scale_factor = float(reference["scale_factor"])
        side = int(reference["image_resolution"]) // autoencoder.downsampling
        self.info = {"shape": [autoencoder.latent_channels, side, side]}
        self.seed = seed
        self.latents = None  # LatentDataset, set by for_training

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    # ------------------------------------------------------------------------------------------ the interface

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H / f, W / f] (posterior mean: deterministic)."""
        return self.autoencoder.encode(images.to(self.device).float()).mode() * self.scale_factor

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images [B, 3, H, W] in [-1, 1]."""
        return self.autoencoder.decode(x.to(self.device).float() / self.scale_factor).clamp(-1, 1)

    def training_data(self, dataset) -> Dataset:
        """What the training stream draws from: the cached latents, not the images."""
        if self.latents is None:
            raise RuntimeError("this LatentSpace was built for sampling; use LatentSpace.for_training to train")
        return self.latents

    def batches(self, stream):
        """Batches of cached posteriors -> {"image": scaled latent samples, "text", "label"}.

        The draw eps is seeded by the ordered item indices of the batch: the data order is a pure function of
        (seed, position), so a resumed run draws exactly what an uninterrupted one would, and an image gets a
        fresh draw each epoch because its batch-mates change."""
        for batch in stream:
            order = ",".join(map(str, batch["index"].tolist()))
            seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{order}".encode()).digest()[:8], "little")
            eps = torch.randn(batch["mean"].shape, generator=torch.Generator().manual_seed(seed))
            z = (batch["mean"] + batch["std"].float() * eps) * self.scale_factor  # (B, C, h, w)
            yield {"image": z, "text": batch["text"], "label": batch["label"]}

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def for_training(cls, cfg, dataset, device, processes) -> "LatentSpace":
        path = resolved(cfg.vae.ckpt)
        autoencoder, payload, fingerprint = load_autoencoder(path, device)
        resolution = int(dataset.resolution)
        if resolution % autoencoder.downsampling:
            raise UserError(f"dataset.resolution={resolution} is not a multiple of the autoencoder's downsampling "
                            f"{autoencoder.downsampling} ({path})")
        trained_at = payload.get("data", {}).get("resolution")
        if trained_at is not None and int(trained_at) != resolution and processes.is_main:
            print(f"note: the autoencoder {path.name} was trained at {trained_at}px and is used at {resolution}px; "
                  f"its scale factor was measured at {trained_at}px", file=sys.stderr)
        reference = {"path": str(path), "fingerprint": fingerprint, "scale_factor": float(payload["scale_factor"]),
                     "downsampling": int(autoencoder.downsampling), "latent_channels": int(autoencoder.latent_channels),
                     "image_resolution": resolution}
        space = cls(autoencoder, reference, seed=int(cfg.seed))
        limit = cfg.vae.get("cache_images")  # vae=none + vae.ckpt=... has no such key
        limit = DEFAULT_CACHE_IMAGES if limit is None else int(limit)
        count = len(dataset) if getattr(dataset, "num_images", 0) is not None else limit
        if count < 1:
            raise UserError(f"vae.cache_images must be >= 1 for a dataset without a fixed size, got {count}")
        cache_dir = Path(cfg.vae.cache_dir) if cfg.vae.get("cache_dir") else Path(cfg.paths.data_dir) / "latents"
        key = latent_cache_key(cfg.dataset, dataset, fingerprint, resolution, count)
        cache_file = cache_dir / f"latents-{cache_key(key)}.pt"
        contents = shared_cache(processes, lambda: load_or_encode(cache_file, space, dataset, count, cfg, processes.is_main))
        space.latents = LatentDataset(dataset, contents["mean"], contents["std"], contents["labels"])
        return space

    @classmethod
    def for_sampling(cls, reference: dict, device, vae_ckpt=None) -> "LatentSpace":
        """The autoencoder a diffusion checkpoint names, found at its stored path or at `vae_ckpt`, and
        refused unless its weights have the stored fingerprint."""
        path = resolved(vae_ckpt or reference["path"])
        named = f"this latent-diffusion checkpoint was trained with autoencoder {reference['path']} ({reference['fingerprint']})"
        if not path.is_file():
            raise UserError(f"{named}, but {path} does not exist; pass vae_ckpt=<that autoencoder's checkpoint>")
        autoencoder, _, fingerprint = load_autoencoder(path, device)
        if fingerprint != reference["fingerprint"]:
            raise UserError(f"{named}, but {path} holds other weights ({fingerprint}); "
                            f"pass vae_ckpt=<the autoencoder checkpoint it was trained with>")
        return cls(autoencoder, reference)


# ---------------------------------------------------------------------------------------------- the cache


class LatentDataset(Dataset):
    """Item i: {"index", "mean", "std" ([C, h, w] posterior of image i), "text", "label"}.

    The caption is asked of the image dataset on every access, so datasets that draw one of several captions
    keep doing so (toy-birds answers from `caption(i)` without rendering)."""

    def __init__(self, dataset, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor):
        self.dataset, self.mean, self.std, self.labels = dataset, mean, std, labels

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, index: int) -> dict:
        caption = getattr(self.dataset, "caption", None)
        text = caption(index) if caption is not None else self.dataset[index]["text"]
        return {"index": index, "mean": self.mean[index], "std": self.std[index], "text": text,
                "label": int(self.labels[index])}


def renderer_version(dataset):
    """A procedural dataset's renderer version (toy-birds' RENDERER_VERSION), when its module has one."""
    return getattr(sys.modules.get(type(dataset).__module__), "RENDERER_VERSION", None)


def latent_cache_key(dataset_cfg, dataset, fingerprint: str, resolution: int, count: int) -> dict:
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)
    for key in DATASET_KEYS_THAT_DO_NOT_CHANGE_IMAGES:
        settings.pop(key, None)
    return {"latent_format_version": CACHE_FORMAT_VERSION, "autoencoder": fingerprint, "resolution": resolution,
            "num_images": count, "dataset": json.loads(json.dumps(settings, default=str)),
            "dataset_class": f"{type(dataset).__module__}.{type(dataset).__name__}",
            "renderer_version": renderer_version(dataset)}


@torch.no_grad()
def encode_dataset(space: LatentSpace, dataset, count: int, cfg) -> dict:
    """Encode items 0..count-1 once: posterior mean [N, C, h, w] (float32), std (float16) and labels [N]."""
    torch.manual_seed(cfg.seed)  # random flips, if the dataset has them, are the same in every run
    subset = torch.utils.data.Subset(dataset, range(count))
    workers = int(cfg.trainer.num_workers)
    loader = DataLoader(subset, batch_size=ENCODE_BATCH, num_workers=workers, shuffle=False,
                        prefetch_factor=4 if workers > 0 else None)
    means, stds, labels = [], [], []
    for batch in tqdm(loader, desc=f"encoding {count} images to latents", unit="batch", leave=False):
        posterior = space.autoencoder.encode(batch["image"].to(space.device).float())
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.half().cpu())  # small and smooth: half precision halves its share of the file
        labels.append(torch.as_tensor(batch["label"]))
    return {"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.cat(labels)}


def load_or_encode(cache_file: Path, space: LatentSpace, dataset, count: int, cfg, verbose: bool) -> dict:
    """The cached latents, or encode them now and store them (atomic write; an unwritable folder costs a warning)."""
    contents = load_cache(cache_file)  # torch.load(weights_only=True); None when missing or unreadable
    if contents is not None and len(contents["mean"]) == count:
        if verbose:
            print(f"latents: loaded the cached latents of {count} images ({cache_file})")
        return contents
    if verbose:
        print(f"latents: encoding {count} images once ({cache_file})")
    contents = {"format_version": FILE_FORMAT_VERSION, **encode_dataset(space, dataset, count, cfg)}
    try:
        save_atomic(contents, cache_file)
    except OSError as error:
        warnings.warn(f"could not write the latent cache {cache_file} ({error}); set vae.cache_dir to a writable folder")
    return contents


def shared_cache(processes, load_or_build):
    """Build the cache on the main process while the others wait, then everyone loads it."""
    if not processes.distributed:
        return load_or_build()
    import torch.distributed as dist

    if processes.is_main:
        contents = load_or_build()
        dist.barrier()
        return contents
    dist.barrier()
    return load_or_build()
