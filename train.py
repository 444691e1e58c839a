"""Train a diffusion model (or, with task=vae, its autoencoder).

    python train.py                                   # toy-birds, CPU-sized defaults
    python train.py dataset=birds model=unet_small    # CUB-200 birds from data/CUB_200_2011
    python train.py --help                            # every group and option
"""

import hydra

from diffusion.cli import report_user_errors, run_user_command


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg) -> None:
    from diffusion.training import train

    train(cfg)


if __name__ == "__main__":
    run_user_command(main, "train")
