"""Our UNet and diffusers' UNet built to the same architecture, and the inputs both are fed.

The mapping (read from diffusers' unet_2d_condition.py / unet_2d.py):
    ours                                  diffusers UNet2DConditionModel
    base_channels * channel_mult          block_out_channels
    num_res_blocks                        layers_per_block (the up path has one more block in both)
    attention_levels (SpatialTransformer) CrossAttnDownBlock2D / CrossAttnUpBlock2D at those levels
    heads = width // head_dim             attention_head_dim (in this class it is the number of heads)
    context_dim                           cross_attention_dim
    pooled_dim (Linear-SiLU-Linear)       class_embed_type="projection", projection_class_embeddings_input_dim
    scale_shift=True                      resnet_time_scale_shift="scale_shift"
    emb_dim                               time_embedding_dim
Our bag of words (vocab_size: an embedding lookup added to the time embedding) has no diffusers counterpart;
the benchmarks build both networks without it.
Unconditional configs (unet_base, DDPM CIFAR-10, SelfAttention2d) map to UNet2DModel with
AttnDownBlock2D / AttnUpBlock2D at the attention levels; attention_head_dim=None there means one head.
Both sides have exactly the same parameter shapes; `check_same_architecture` asserts it.
"""

from __future__ import annotations

import math

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from diffusion.config import build

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
MODELS = {"tiny": "unet_tiny", "small": "unet_small", "base": "unet_base"}
UNCONDITIONAL = {"base"}  # the DDPM CIFAR-10 network: self-attention only, no text


@dataclass
class Pair:
    """Our network and the reference built to the same architecture."""

    name: str  # tiny | small | base
    ours: torch.nn.Module
    reference: torch.nn.Module
    context_dim: int | None  # None: unconditional

    @property
    def conditional(self) -> bool:
        return self.context_dim is not None


def model_config(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return OmegaConf.load(CONF / f"{MODELS[name]}.yaml")


def heads_per_level(cfg) -> list[int]:
    """The heads our UNet gives each level (the rule in models/unet.py)."""
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    return [cfg.get("num_heads") or max(1, w // cfg.head_dim) for w in widths]


def build_ours(name: str, context_dim: int | None, in_channels: int = 3) -> torch.nn.Module:
    fill = {"in_channels": in_channels, "out_channels": in_channels, "context_dim": context_dim, "pooled_dim": context_dim}
    return build(model_config(name), where="model", **fill)


def build_reference(name: str, context_dim: int | None, in_channels: int = 3, resolution: int = 32) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel, UNet2DModel

    cfg = model_config(name)
    levels = range(len(cfg.channel_mult))
    attention = set(cfg.attention_levels)
    common = dict(sample_size=resolution, in_channels=in_channels, out_channels=in_channels,
                  block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
                  layers_per_block=cfg.num_res_blocks, dropout=cfg.dropout,
                  resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default",
                  norm_num_groups=math.gcd(32, cfg.base_channels),  # constructible; match_group_norms sets each layer
                  norm_eps=1e-6)  # our GroupNorms with 32 groups use 1e-6 (models/layers.py: group_norm)
    if cfg.get("emb_dim"):  # our time-embedding width; both default to 4 * the first width
        common["time_embedding_dim"] = cfg.emb_dim
    if context_dim is None:
        heads = heads_per_level(cfg)
        if any(h != 1 for h in heads):
            raise ValueError("the unconditional mirror supports one head (as in DDPM)")
        return match_group_norms(UNet2DModel(down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
                           up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)),
                           attention_head_dim=None, **common))  # None: head width = channels, i.e. one head
    return match_group_norms(UNet2DConditionModel(
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=tuple(heads_per_level(cfg)),  # the number of heads per level in this class
        cross_attention_dim=context_dim, class_embed_type="projection",
        projection_class_embeddings_input_dim=context_dim, **common))


def match_group_norms(reference: torch.nn.Module) -> torch.nn.Module:
    """Give every GroupNorm of the reference our rule (models/layers.py: group_norm): gcd(32, channels) groups,
    eps 1e-6 with 32 groups and 1e-5 with fewer. diffusers takes one group count for the whole network, which
    for a base width under 32 (unet_tiny: 16) would be 16 groups everywhere; the count holds no parameters."""
    for module in reference.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.num_groups = math.gcd(32, module.num_channels)
            module.eps = 1e-6 if module.num_groups == 32 else 1e-5
    return reference


def build_pair(name: str, context_dim: int | None = 128, in_channels: int = 3, resolution: int = 32,
               device="cpu", memory_format=torch.contiguous_format, seed: int = 0) -> Pair:
    context_dim = None if name in UNCONDITIONAL else context_dim
    torch.manual_seed(seed)
    ours = build_ours(name, context_dim, in_channels)
    torch.manual_seed(seed)
    reference = build_reference(name, context_dim, in_channels, resolution)
    for net in (ours, reference):
        net.to(device, memory_format=memory_format)
    return Pair(name, ours, reference, context_dim)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_same_architecture(pair: Pair, tolerance: float = 0.02) -> dict:
    """Parameter counts within `tolerance` (asserted), and whether the parameter shapes match one for one."""
    ours, reference = parameter_count(pair.ours), parameter_count(pair.reference)
    difference = abs(ours - reference) / reference
    assert difference <= tolerance, f"{pair.name}: parameters differ by {difference:.1%} (ours {ours}, reference {reference})"
    shapes = Counter(tuple(p.shape) for p in pair.ours.parameters()) == Counter(tuple(p.shape) for p in pair.reference.parameters())
    return {"params_ours": ours, "params_reference": reference, "params_difference": round(difference, 5),
            "same_parameter_shapes": shapes}


def call_order(model: torch.nn.Module, run) -> list[torch.nn.Module]:
    """The modules that hold parameters, in the order a forward pass first calls them."""
    order, handles = [], []
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(lambda m, args: order.append(m) if m not in order else None))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return order


def check_same_function(pair: Pair, inputs: Inputs) -> dict:
    """Copy our weights into (copies of) both networks, module by module in the order a forward pass calls
    them, and return the largest difference between the two outputs (and the largest output, for scale):
    the reference computes our function when the difference is at float32 round-off. Every layer is made
    live first (our zero-initialised layers would make both outputs 0). Only for configs whose parameter
    shapes match one for one (the text-conditional ones)."""
    ours, reference = copy.deepcopy(pair.ours).eval(), copy.deepcopy(pair.reference).eval()
    generator = torch.Generator().manual_seed(0)
    for module in ours.modules():
        for name, p in module.named_parameters(recurse=False):
            scale = 0.1 if p.ndim == 1 else p[0].numel() ** -0.5  # biases and norm affines; weights ~ 1 / sqrt(fan-in)
            offset = 1.0 if name == "weight" and isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) else 0.0
            p.data.copy_(offset + scale * torch.randn(p.shape, generator=generator))
    our_modules = call_order(ours, lambda: ours_forward(ours, inputs))
    reference_modules = call_order(reference, lambda: reference_forward(reference, inputs))
    assert len(our_modules) == len(reference_modules), (len(our_modules), len(reference_modules))
    for mine, theirs in zip(our_modules, reference_modules):
        mine_params, their_params = list(mine.parameters(recurse=False)), list(theirs.parameters(recurse=False))
        assert [p.shape for p in mine_params] == [p.shape for p in their_params], (mine, theirs)
        for a, b in zip(mine_params, their_params):
            b.data.copy_(a.data)
    with torch.no_grad():
        out = ours_forward(ours, inputs)
        difference = (out - reference_forward(reference, inputs)).abs().max()
    return {"max_output_difference": float(difference), "max_output": float(out.abs().max())}


@dataclass
class Inputs:
    x: torch.Tensor  # [B, C, H, W] noisy images
    t: torch.Tensor  # [B] integer timesteps
    context: torch.Tensor | None = None  # [B, L, D] token states
    mask: torch.Tensor | None = None  # [B, L] True for real tokens
    pooled: torch.Tensor | None = None  # [B, D]
    target: torch.Tensor | None = None  # [B, C, H, W] regression target for the training step


def prompt_mask(batch: int, length: int, generator: torch.Generator, minimum: int = 2) -> torch.Tensor:
    """Prompts of varying length padded to `length` (as a tokenizer batch looks): [B, L] bool."""
    lengths = torch.randint(minimum, length + 1, (batch,), generator=generator)
    return torch.arange(length)[None] < lengths[:, None]


def make_inputs(pair: Pair, batch: int, resolution: int = 32, in_channels: int = 3, context_length: int = 20,
                device="cpu", memory_format=torch.contiguous_format, seed: int = 0) -> Inputs:
    """The same random inputs for both networks (context length 20: a toy-birds caption is 12-20 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    image = (batch, in_channels, resolution, resolution)
    inputs = Inputs(x=torch.randn(image, generator=generator), t=torch.randint(0, 1000, (batch,), generator=generator),
                    target=torch.randn(image, generator=generator))
    if pair.conditional:
        inputs.context = torch.randn(batch, context_length, pair.context_dim, generator=generator)
        inputs.mask = prompt_mask(batch, context_length, generator)
        inputs.pooled = torch.randn(batch, pair.context_dim, generator=generator)
    for field in ("x", "t", "context", "mask", "pooled", "target"):
        value = getattr(inputs, field)
        if value is not None:
            value = value.to(device)
            setattr(inputs, field, value.contiguous(memory_format=memory_format) if value.ndim == 4 else value)
    return inputs


def ours_forward(model, inputs: Inputs) -> torch.Tensor:
    cond = None if inputs.context is None else {"context": inputs.context, "context_mask": inputs.mask, "pooled": inputs.pooled}
    return model(inputs.x, inputs.t, cond)


def reference_forward(model, inputs: Inputs) -> torch.Tensor:
    if inputs.context is None:
        return model(inputs.x, inputs.t).sample
    return model(inputs.x, inputs.t, encoder_hidden_states=inputs.context, class_labels=inputs.pooled,
                 encoder_attention_mask=inputs.mask).sample


FORWARD = {"ours": ours_forward, "reference": reference_forward}
