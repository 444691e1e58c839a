"""Train or load a model from Python, for notebooks and experiment scripts: the same `train(cfg)` as
train.py, on the real configs composed with Hydra's compose API.

    ckpt = train_model("runs/tiny", *TINY, steps=60)           # seconds on a CPU
    loaded = load_model(ckpt)                                  # LoadedModel (diffusion/model.py)
    loaded = model_for_notebook(os.environ.get("CKPT"))        # a real checkpoint, or a tiny one trained now
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusion.config import CONF_DIR
from diffusion.loading import load_model


# A model small enough to train in seconds: 16 px, 8 base channels, a one-layer text encoder.
TINY = [
    "dataset.resolution=16",
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[1]", "model.head_dim=8",
    "text.width=16", "text.depth=1", "text.heads=2",
    "trainer.batch_size=8", "trainer.num_workers=0", "trainer.log_every=20", "trainer.sample_every=0",
    "trainer.sample_num=4", "trainer.checkpoint_every=0", "trainer.channels_last=false",
    "optim.warmup_steps=10", "optim.lr=3e-3", "sampler.steps=10", "device=cpu",
]


def train_config(output_dir, *overrides: str, config_name: str = "train"):
    """conf/train.yaml composed with `overrides`, writing to `output_dir` (data under output_dir/data
    unless paths.data_dir is given)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    output_dir = Path(output_dir).resolve()
    defaults = [f"paths.output_dir={output_dir}", f"paths.data_dir={output_dir / 'data'}"]
    GlobalHydra.instance().clear()  # a notebook may have composed before
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*defaults, *overrides])


def train_model(output_dir, *overrides: str, steps: int | None = None, minutes: float | None = None) -> Path:
    """Train with the real loop; `steps` sets trainer.max_steps (the lr schedule's length too) and
    `minutes` caps the training time (trainer.max_minutes). Returns the final checkpoint."""
    from diffusion.training import train

    budget = ([f"trainer.max_steps={int(steps)}"] if steps is not None else []) + \
             ([f"trainer.max_minutes={float(minutes)}"] if minutes is not None else [])
    return Path(train(train_config(output_dir, *overrides, *budget)))


def model_for_notebook(ckpt=None, *overrides: str, steps: int = 60, output_dir=None):
    """`ckpt` when given (e.g. the CKPT environment variable), else a TINY model trained for `steps` in a
    temporary folder (or `output_dir`)."""
    if ckpt:
        return load_model(ckpt)
    output_dir = output_dir or tempfile.mkdtemp(prefix="notebook-model-")
    return load_model(train_model(output_dir, *TINY, *overrides, steps=steps))
