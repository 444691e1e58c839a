"""The trainable whole (denoiser network + text encoder, called as `model(x_t, t, cond)`), the `LoadedModel`
every loader returns, and `open_checkpoint`, which rebuilds a model trained here from its checkpoint alone.

    from diffusion import load_model                           # diffusion/loading.py: any format
    loaded = load_model("outputs/.../checkpoints/last.ckpt")   # LoadedModel
    loaded.network                                              # the hand-written nn.Module: network(x_t, t, cond)

`diffusion/` never imports a concrete network class: they are built from config through
`diffusion.config.build`, which only builds this project's own classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from diffusion.conditioning import Cond
from diffusion.config import (build, build_sampler, is_consistency_student, objective_for, sampler_node_for,
                              stored_config, target_class)
from diffusion.errors import UserError


class DiffusionModel(nn.Module):
    """Denoiser network (UNet, DiT, MMDiT) + optional text encoder, called as `model(x_t, t, cond)`; `encode` turns prompts into a `Cond`.

    A frozen pretrained text encoder is held outside the module tree, so it is not trained, not
    averaged by EMA and not written into checkpoints (its weights ship with its package).
    """

    def __init__(self, denoiser: nn.Module, text_encoder: nn.Module | None = None, num_classes: int | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.num_classes = num_classes  # class-conditional when set; label `num_classes` means "no class"
        if text_encoder is None or getattr(text_encoder, "trainable", True):
            self.text_encoder = text_encoder
            self._frozen_text = None
        else:
            self.text_encoder = None
            self._frozen_text = [text_encoder]  # a list hides it from nn.Module's registration

    @property
    def text(self) -> nn.Module | None:
        return self.text_encoder if self._frozen_text is None else self._frozen_text[0]

    @property
    def is_text_conditional(self) -> bool:
        return self.text is not None

    def to(self, *args, **kwargs):
        if self._frozen_text is not None:
            self._frozen_text[0].to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def encode(self, prompts: list[str] | None = None, class_labels: torch.Tensor | None = None, device=None) -> Cond:
        """Prompts (and/or class labels; None entries or -1 mean 'no class') -> the denoiser's conditioning."""
        cond = Cond()
        if self.is_text_conditional:
            if prompts is None:
                raise UserError("this model is text-conditional: give a prompt")
            encoding = self.text.encode(list(prompts), device=device)
            cond.context, cond.context_mask, cond.pooled = encoding.states, encoding.mask, encoding.pooled
            if getattr(self.denoiser, "word_embed", None) is not None:
                cond.token_ids = encoding.ids
        if self.num_classes is not None:
            n = len(prompts) if prompts is not None else len(class_labels)
            if class_labels is None:
                class_labels = torch.full((n,), -1)
            class_labels = torch.as_tensor(class_labels).clone()
            class_labels[class_labels < 0] = self.num_classes
            cond.class_labels = class_labels.to(device, non_blocking=True)  # no host-device sync in the training step
        return cond

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None, *,
                prompts: list[str] | None = None, class_labels: torch.Tensor | None = None, **times) -> torch.Tensor:
        """The denoiser. Training passes raw `prompts` (and labels) instead of `cond`, so that the text
        encoder runs inside this forward call and DistributedDataParallel sees its gradients too. `times`: the
        per-example scalars a MeanFlow network also takes (`r`, `guidance`: Cond's fields)."""
        if cond is None and (prompts is not None or class_labels is not None):
            cond = self.encode(prompts, class_labels, device=x_t.device)
        if times:
            cond = replace(cond if cond is not None else Cond(), **times)
        return self.denoiser(x_t, t, cond)


# ---------------------------------------------------------------------------------------------- building


def text_needs_vocabulary(text_cfg) -> bool:
    """Whether the configured text encoder learns its own vocabulary from the captions (the scratch one)."""
    if text_cfg is None or not text_cfg.get("_target_"):
        return False
    return hasattr(target_class(text_cfg, "text"), "vocabulary_from_captions")


def build_diffusion_model(cfg, data_info: dict, vocabulary: list[str] | None) -> DiffusionModel:
    """Denoiser (+ text encoder) from the `model`, `text` and `diffusion` config nodes; the values that follow
    from the data (channels, classes, vocabulary, context width) are filled in here, not in YAML."""
    text = None
    if cfg.text is not None and cfg.text.get("_target_"):
        fill = {"vocabulary": vocabulary} if text_needs_vocabulary(cfg.text) else {}
        text = build(cfg.text, exclude=("min_count",), where="text", **fill)
    num_classes = data_info.get("num_classes") if cfg.diffusion.get("class_conditional") else None
    if cfg.diffusion.get("class_conditional") and not num_classes:
        raise UserError("diffusion.class_conditional=true needs a dataset with class labels (e.g. dataset=cifar10)")
    width = text.output_dim if text is not None else None
    inputs = network_inputs(cfg)
    channels = data_info["shape"][0]  # 3 for pixels, the autoencoder's latent channels for latents
    denoiser = build(cfg.model, where="model", in_channels=channels, out_channels=channels,
                 context_dim=width, pooled_dim=width if cfg.diffusion.get("pooled_text", True) else None,
                 num_classes=num_classes + 1 if num_classes else None,
                 **({"vocab_size": text.vocab_size} if text is not None and cfg.diffusion.get("word_embedding") else {}),
                 **({"extra_time_inputs": inputs} if inputs else {}))  # + 1: the "no class" label for guidance
    return DiffusionModel(denoiser, text, num_classes)


def network_inputs(cfg) -> tuple[str, ...]:
    """What the objective gives the network besides (x_t, t): MeanFlow's (`r`, `guidance`), filled into the backbone's
    `extra_time_inputs` switch here (a value that follows from the objective, not repeated in YAML). A backbone
    without the switch, or the switch set for an objective that gives nothing, is refused in one line."""
    import inspect

    objective = objective_for(cfg)
    needed = tuple(objective.network_inputs)
    configured = tuple(cfg.model.get("extra_time_inputs") or ())
    if configured and configured != needed:
        raise UserError(f"model.extra_time_inputs={list(configured)}: objective={objective.name} gives the network "
                        f"{list(needed) or 'nothing besides t'}; drop the key (the objective fills it in)")
    network_class = target_class(cfg.model, "model")
    if needed and "extra_time_inputs" not in inspect.signature(network_class).parameters:
        raise UserError(f"objective={objective.name} needs a backbone that also embeds {' and '.join(needed)} "
                        f"(model.extra_time_inputs): {network_class.__name__} has no such input; use model=unet_* or dit_*")
    return needed


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A trained model rebuilt from its checkpoint: what `sample.py`, the evaluation and notebooks use."""

    model: DiffusionModel  # network + text encoder, eval mode
    config: DictConfig  # the training config stored in the checkpoint
    payload: dict
    space: object  # PixelSpace or LatentSpace: where the model denoises, and how to decode
    path: Path

    @property
    def network(self) -> nn.Module:
        """The hand-written denoiser network, called `network(x_t, t, cond)`."""
        return self.model.denoiser

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network denoises: the image, or its latent."""
        return tuple(self.payload["data"]["shape"])

    @property
    def objective(self):
        """The objective the checkpoint was trained with (checkpoints from before objectives: ddpm)."""
        return objective_for(self.config)

    @property
    def is_consistency_student(self) -> bool:
        """Distilled by `python train.py task=distill` (guidance folded in): sampled by the consistency sampler."""
        return is_consistency_student(self.config)

    def sampler(self, sampler_cfg=None, eta=None):
        """The checkpoint's own sampler, or `sampler_cfg` (e.g. from `sample.py sampler=ddpm`); a consistency
        student only by the consistency sampler (diffusion.config.sampler_node_for); image-to-image counts its steps
        from strength as the model's config says (`strength_rounding`, any sampler)."""
        sampler = build_sampler(sampler_node_for(self.config, sampler_cfg), self.objective, bounded=self.space.bounded,
                                eta=eta)
        sampler.strength_rounding = self.config.get("strength_rounding", sampler.strength_rounding)
        return sampler


def legacy_keys(state_dict: dict) -> dict:
    """Weights saved before the denoiser was called `denoiser` (`unet.*`), under today's names."""
    return {("denoiser." + key[5:] if key.startswith("unet.") else key): value for key, value in state_dict.items()}


def open_checkpoint(path, device="cpu", use_ema: bool = True, vae_ckpt=None) -> LoadedModel:
    """Open a diffusion checkpoint of this project (`train.py`'s last.ckpt) on `device`, with its EMA weights
    unless `use_ema=False`; `vae_ckpt` says where a latent model's autoencoder lies now, if it moved.
    (`diffusion.load_model` opens this and every published format.)"""
    from diffusion.checkpoint import load_checkpoint

    return open_payload(load_checkpoint(path, kind="diffusion"), path, device, use_ema, vae_ckpt)


def open_payload(payload: dict, path, device, use_ema: bool = True, vae_ckpt=None) -> LoadedModel:
    """A checkpoint's contents (read from a .ckpt, or from an export's safetensors) as a LoadedModel."""
    from diffusion.device import resolve_device
    from diffusion.spaces import space_for_sampling

    device = resolve_device(device) if isinstance(device, str) else device
    config = stored_config(payload, path)
    vocabulary = payload["tokenizer"]["vocabulary"] if payload.get("tokenizer") else None
    if vocabulary is None and text_needs_vocabulary(config.get("text")):
        raise UserError(f"{path}: its text encoder learns its own vocabulary, but the checkpoint stores none "
                        f"(no 'tokenizer'); the file was edited: use another checkpoint")
    try:
        model = build_diffusion_model(config, payload["data"], vocabulary)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 (a config that parses but cannot build this project's model)
        raise UserError(f"{path}: the stored config does not build a model ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:120]}); the file was damaged or edited") from None
    weights = legacy_keys(payload["ema" if use_ema else "model"])
    broken = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise UserError(f"{path}: {len(broken)} weight tensors hold NaN or inf (first: {', '.join(broken[:3])}); "
                        f"the run diverged before this checkpoint: use an earlier one")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not match the stored config ({str(error).splitlines()[0][:120]})") from None
    model = model.to(device).eval()
    space = space_for_sampling(payload, device, vae_ckpt)
    return LoadedModel(model, config, payload, space, Path(path))
