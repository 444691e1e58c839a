"""GPU-ready by construction, checked without a GPU.

- The one sampling loop (every sampler, guidance, inpainting) and a training step run on the `meta` device: a meta
  tensor has a shape but no values, so any read of a tensor value on the host (`.item()`, `float(t)`, `if t:`) —
  each a host-device synchronisation per step on a GPU — raises there.
- Every backbone's forward, text-conditional included, is captured by TorchDynamo as one graph (no graph breaks),
  so `trainer.compile=true` compiles the whole network.
"""

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.config import build_sampler, objective_for
from diffusion.model import build_diffusion_model
from diffusion.pipeline import generate_images
from diffusion.training.ema import EMA
from diffusion.training.optim import make_optimizer
from diffusion.training.runtime import Processes
from tiny import CONF, tiny_train_cfg

META = torch.device("meta")
VOCABULARY = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "bird", "blue", "duck"]
SHAPE = (3, 16, 16)


def tiny_model(tmp_path, *overrides):
    cfg = tiny_train_cfg(tmp_path, *overrides)
    torch.manual_seed(0)
    return cfg, build_diffusion_model(cfg, {"shape": list(SHAPE), "resolution": 16}, VOCABULARY)


@pytest.mark.parametrize("sampler,objective", [("ddim", "ddpm"), ("ddpm", "ddpm"), ("euler", "ddpm"), ("heun", "edm"),
                                               ("dpmpp_2m", "ddpm"), ("flow_euler", "flow"), ("flow_heun", "flow")])
def test_the_sampling_loop_reads_no_value_on_the_host(tmp_path, sampler, objective):
    cfg, model = tiny_model(tmp_path, f"objective={objective}")
    model = model.to(META).eval()
    node = OmegaConf.load(CONF / "sampler" / f"{sampler}.yaml")
    built = build_sampler(node, objective_for(cfg), eta=0.5 if sampler == "ddim" else None)  # ddim: noise too
    mask = torch.zeros(1, *SHAPE[1:])
    mask[..., :8] = 1
    for init, kept in ((None, None), (torch.zeros(SHAPE), mask)):  # text-to-image, then inpainting
        images = generate_images(model, built, ["a red bird", "a blue duck"], [0, 1], shape=SHAPE, steps=3,
                                 guidance_scale=3.0, init=init, mask=kept, strength=1.0, device=META)
        assert images.device.type == "meta" and images.shape == (2, *SHAPE)


@pytest.mark.parametrize("backbone", ["unet_tiny", "dit_tiny", "mmdit_tiny"])
def test_a_training_step_reads_no_value_on_the_host(tmp_path, monkeypatch, backbone):
    from diffusion.training import loop

    extra = [] if backbone == "unet_tiny" else [f"model={backbone}"]
    cfg, model = tiny_model(tmp_path, *extra)
    model = model.to(META)
    ema = EMA(model, 0.999)
    optimizer = make_optimizer(model.parameters(), cfg.optim, META)
    # meta has no random generator: the step's device noise is drawn without one (the CPU draws keep theirs)
    monkeypatch.setattr(loop, "step_generator", lambda seed, step, micro, device:
                        torch.Generator().manual_seed(seed) if device.type == "cpu" else None)
    batch = {"image": torch.zeros(4, *SHAPE), "text": ["a red bird"] * 4, "label": torch.zeros(4, dtype=torch.long)}
    loss = loop.train_step(model, model, ema, optimizer, [batch, batch], objective_for(cfg), cfg, Processes(), META, 0,
                           torch.contiguous_format)
    assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("backbone", ["unet_tiny", "dit_tiny", "mmdit_tiny"])
def test_every_backbone_compiles_without_graph_breaks(tmp_path, backbone):
    import torch._dynamo

    extra = [] if backbone == "unet_tiny" else [f"model={backbone}"]
    _, model = tiny_model(tmp_path, *extra)
    model = model.eval()
    cond = model.encode(["a red bird", "a blue duck on water"])  # text-conditional: context, mask, pooled, words
    x, t = torch.randn(2, *SHAPE), torch.tensor([10, 500])
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.denoiser)(x, t, cond)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
