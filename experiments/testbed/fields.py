"""Draw the exact 2-D fields of the testbed's toy mixture: python experiments/testbed/fields.py [sigma]."""

import sys
from pathlib import Path

import torch

from diffusion.testbed import plot_fields, toy_mixture_2d

if __name__ == "__main__":
    torch.set_num_threads(1)  # small tensors: threads only add contention
    sigma = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    path = plot_fields(toy_mixture_2d(), sigma, Path(__file__).parent / f"fields_sigma{sigma:g}.png", class_label=0,
                       guidance_scale=3.0, extent=1.4)
    print(path)
