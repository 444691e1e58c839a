"""Published weights into the hand-written networks: one file per source format, each a readable table from the
published keys to ours, `to_ours(state_dict)` (and `from_ours`), and `network_config(...)`: the published config as
our network's constructor keyword arguments with its `_target_`.

    diffusers_unet    diffusers UNet2DModel (DDPM CIFAR-10)                           -> models.unet.UNet
    diffusers_sd_unet diffusers UNet2DConditionModel (SD 1.x / 2.x)                   -> models.unet.UNet
    diffusers_dit     diffusers DiTTransformer2DModel (DiT-XL/2)                      -> models.dit.DiT
    diffusers_vae     diffusers AutoencoderKL (Stable Diffusion)                      -> models.vae.AutoencoderKL
    dit_original      facebookresearch/DiT's DiT-XL-2-256x256.pt                      -> models.dit.DiT
    ldm_vae           LDM / SD single-file autoencoder                                -> models.vae.AutoencoderKL
    ldm_unet          LDM / SD single-file UNet (+ family(): SD 1/2, SDXL, SD3, Flux) -> models.unet.UNet

These modules never import a network (diffusion/ builds networks only from `_target_` configs); `table.py` is the
engine they share. Reading files (safetensors, `torch.load(weights_only=True)`) is the loader's job.
"""
