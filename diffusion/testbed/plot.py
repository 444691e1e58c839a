"""A picture of the exact 2-D fields: the noised density p(x; sigma) and the denoiser's displacement D(x; sigma) - x.

Each arrow starts at a grid point x and points at D(x; sigma), the exact posterior mean: where the ideal
denoiser sends that point at this noise level. D(x) - x = sigma^2 score, so the arrows are also the score field
scaled by sigma^2. Arrows are shrunk by one factor per panel (printed in its title) so that the longest reach
about one grid cell; the background is log p(x; sigma), shown over its top 8 nats. With a class, three panels: unconditional, conditional
(w = 1) and guided (w = guidance_scale, D_u + w (D_c - D_u); the background of the last two is p(x; sigma | c)).
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.errors import UserError
from diffusion.testbed.mixture import GaussianMixture, denoiser, guided_denoiser, log_density


def _grid(extent: float, resolution: int):
    axis = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return xs, ys, torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # points [R*R, 2]


def plot_fields(mixture: GaussianMixture, sigma: float, path, class_label: int | None = None,
                guidance_scale: float = 3.0, extent: float = 1.6, resolution: int = 200, arrows: int = 21) -> Path:
    """Write a PNG of p(x; sigma) with the arrows D(x; sigma) - x (unguided, and guided when a class is given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    if mixture.dim != 2:
        raise UserError(f"plot_fields draws 2-D mixtures, this one has dim={mixture.dim}")
    if class_label is not None and not 0 <= class_label < mixture.num_classes:
        raise UserError(f"class_label must be in 0 .. {mixture.num_classes - 1}, got {class_label}")
    panels = [("unconditional", None, 1.0)]
    if class_label is not None:
        panels += [(f"class {class_label}", class_label, 1.0), (f"class {class_label}, guided w={guidance_scale:g}",
                                                                class_label, guidance_scale)]
    xs, ys, points = _grid(extent, resolution)
    ax_, ay_, arrow_points = _grid(extent * (arrows - 1) / arrows, arrows)  # arrows at cell centres
    figure = Figure(figsize=(5 * len(panels), 5), dpi=100)
    FigureCanvasAgg(figure)
    for i, (title, label, w) in enumerate(panels):
        labels = None if label is None else torch.full((len(points),), label)
        log_p = log_density(mixture, points, sigma, labels).reshape(resolution, resolution)
        arrow_labels = None if label is None else torch.full((len(arrow_points),), label)
        if label is None:
            displacement = denoiser(mixture, arrow_points, sigma) - arrow_points
        else:
            displacement = guided_denoiser(mixture, arrow_points, sigma, arrow_labels, w) - arrow_points
        ax = figure.add_subplot(1, len(panels), i + 1)
        ax.pcolormesh(xs.numpy(), ys.numpy(), log_p.numpy(), cmap="Greys", shading="auto",
                      vmin=float(log_p.max()) - 8, vmax=float(log_p.max()))
        cell = 2 * extent / arrows
        shrink = cell / float(displacement.norm(dim=1).max().clamp(min=1e-12))  # longest arrow = one cell
        ax.quiver(ax_.reshape(-1).numpy(), ay_.reshape(-1).numpy(), displacement[:, 0].numpy(),
                  displacement[:, 1].numpy(), angles="xy", scale_units="xy", scale=1 / shrink, color="tab:red",
                  width=0.004)
        ax.set_title(f"{title}\nlog p(x; sigma={sigma:g}), arrows (D(x) - x) x {shrink:.2g}", fontsize=10)
        ax.set_xlim(-extent, extent), ax.set_ylim(-extent, extent), ax.set_aspect("equal")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
