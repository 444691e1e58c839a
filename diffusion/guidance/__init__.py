"""Guidance methods, one file each; every one wraps the network into the `denoise(x_t, t)` the samplers call.

- `cfg`: classifier-free guidance (Ho & Salimans 2021), today's default;
- `interval`: CFG only inside a sigma band, one conditional pass outside it (Kynkäänniemi et al. 2024);
- `apg`: adaptive projected guidance (Sadat et al. 2024);
- `rescale`: CFG rescale (Lin et al. 2024);
- `auto`: autoguidance (Karras et al. 2024): the main model guided by a weaker one of itself, both conditional.
- for a MeanFlow model the scale is an input of the network instead (iMF; `as_input.py`), whatever the method.

Chosen with the `guidance` config group (`python sample.py ... guidance=apg guidance.eta=0`); `guided_denoiser`
builds the one a spec names (the config node as a dict: `name` and the method's options); autoguidance's guide
model is loaded and checked by the caller (`sample.py guide_ckpt=`, diffusion/loading.py `load_guide`) and given
as `guide`, already conditioned on the prompts.
"""

from __future__ import annotations

import inspect

from diffusion.errors import UserError, check_choice
from diffusion.guidance.apg import adaptive_projected_guidance
from diffusion.guidance.auto import autoguidance
from diffusion.guidance.as_input import guidance_as_input
from diffusion.guidance.cfg import Denoiser, classifier_free_guidance, conditional
from diffusion.guidance.interval import guidance_interval
from diffusion.guidance.rescale import cfg_rescale

METHODS = {"cfg": classifier_free_guidance, "interval": guidance_interval, "apg": adaptive_projected_guidance,
           "rescale": cfg_rescale, "auto": autoguidance}
GIVEN = ("model", "cond", "uncond", "scale", "guided_channels", "objective", "guide")  # filled in by the caller


def options_of(name: str) -> list[str]:
    return [p for p in inspect.signature(METHODS[name]).parameters if p not in GIVEN]


def guided_denoiser(spec, model, cond, uncond, scale: float, guided_channels: int | None = None,
                    objective=None, guide: Denoiser | None = None) -> Denoiser:
    """The denoiser a spec names: None is classifier-free guidance; {"name": "apg", "eta": 0.0, ...} another.
    `guide`: autoguidance's guide, conditioned ((x_t, t) -> its raw output); only guidance=auto takes one."""
    options = dict(spec or {})
    name = options.pop("name", "cfg")
    check_choice("guidance method (guidance=)", name, METHODS)
    if "r" in getattr(objective, "network_inputs", ()):  # MeanFlow: trained on the guided field, told the scale
        if name != "cfg" or options:
            raise UserError(f"guidance={name}: a MeanFlow model takes guidance_scale as an input of the network (iMF), "
                            f"not as a mix of two passes; drop guidance= and set guidance_scale")
        return guidance_as_input(model, cond, scale, objective)
    unknown = [key for key in options if key not in options_of(name)]
    if unknown:
        raise UserError(f"guidance={name} has no option {unknown[0]!r}; its options: {', '.join(options_of(name)) or 'none'}")
    method = METHODS[name]
    if "objective" in inspect.signature(method).parameters:
        options["objective"] = objective
    if "guide" in inspect.signature(method).parameters:
        options["guide"] = guide
    elif guide is not None:
        raise UserError(f"a guide model (guide_ckpt) applies to autoguidance only: use guidance=auto, or drop guide_ckpt")
    return method(model, cond, uncond, scale, guided_channels, **options)


__all__ = ["METHODS", "Denoiser", "adaptive_projected_guidance", "autoguidance", "guidance_as_input", "cfg_rescale", "classifier_free_guidance",
           "conditional", "guidance_interval", "guided_denoiser"]
