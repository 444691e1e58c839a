"""A from-scratch diffusion research framework: the public API for notebooks and scripts.

    from diffusion import load_model, generate_images, train

    loaded = load_model("outputs/<date>/<time>/checkpoints/last.ckpt")   # any checkpoint sample.py opens
    loaded.network                    # the hand-written denoiser nn.Module, called network(x_t, t, cond)
    images = generate_images(loaded.model, loaded.sampler(), ["a red bird"], seeds=[0],
                             shape=loaded.shape, steps=25, guidance_scale=3, decode=loaded.space.decode)

    generate(cfg)                     # what `python sample.py ...` runs (a composed conf/sample.yaml)
    train(cfg)                        # what `python train.py ...` runs (a composed conf/train.yaml)

The names are imported on first use, so `import diffusion` stays cheap.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "load_model": "diffusion.loading",
    "LoadedModel": "diffusion.model",
    "generate_images": "diffusion.pipeline",
    "generate": "diffusion.sampling",
    "train": "diffusion.training",
    "UserError": "diffusion.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'diffusion' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
