"""Generate images from a checkpoint: text-to-image, or image-to-image with init_image and strength.

    python sample.py ckpt=outputs/<date>/<time>/checkpoints/last.ckpt prompt="a red bird, facing left" num_images=8
    python sample.py ckpt=... prompt="a blue duck on water" init_image=photo.png strength=0.6
    python sample.py ckpt=... prompt="a red bird" sampler=ddpm steps=1000
"""

import hydra

from diffusion.cli import report_user_errors, run_user_command


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@report_user_errors
def main(cfg) -> None:
    from diffusion.sampling import generate

    generate(cfg)


if __name__ == "__main__":
    run_user_command(main, "sample")
