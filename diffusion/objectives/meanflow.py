"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", arXiv 2505.13447) in its improved form
iMF (Geng et al. 2025-12, "Improved Mean Flows: On the Challenges of Fastforward Generative Models", arXiv 2512.02012).

On the rectified-flow path z_t = (1 - t) x0 + t eps (t = 1 is noise; objectives/flow.py), whose conditional velocity
is v_c = eps - x0, the network predicts the *average* velocity over [r, t] of the marginal flow v(z, t):

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds,   so one step is  z_r = z_t - (t - r) u(z_t, r, t)   (MF eq. 3)

Differentiating (t - r) u = integral_r^t v ds in t (r held) gives the MeanFlow identity (MF eq. 6)

    u(z_t, r, t) = v(z_t, t) - (t - r) du/dt,     du/dt = v . grad_z u + d_t u                         (MF eq. 8)

the total derivative along the flow being one Jacobian-vector product with tangents (v, 0, 1) on (z, r, t). At
r = t the identity says u(z, t, t) = v(z, t): the network's instantaneous velocity is u at r = t.

The two losses (`loss=`), both per example with the guided field v_g below in place of v:

    mf  (MF eq. 9-10):  || u_theta(z_t, r, t) - sg(v_g - (t - r) du_theta/dt) ||^2,  JVP tangent v_g
    imf (iMF section 4, "v-loss"):  || V_theta(z_t) - v_g ||^2  with the compound prediction
            V_theta = u_theta(z_t, r, t) + (t - r) sg(du_theta/dt),  JVP tangent sg(u_theta(z_t, t, t))
        i.e. the identity read as a re-parameterisation of v through u, regressed onto eps - x0 like flow matching.
        Its JVP runs along the network's own (marginal) velocity, not the noisy conditional eps - x0, so V_theta is a
        function of z_t alone and the target no longer contains the network (iMF's first point).

Guidance (MF section 4.2 with kappa = 0; iMF section 5: the scale as a conditioning input): every example draws a
scale w in [1, guidance_max], the network is told w, and the field it learns is classifier-free guided,
    v_g = w (eps - x0) + (1 - w) sg(u_theta(z_t, t, t | no prompt)),
whose expectation given z_t and the prompt is w v(z_t | c) + (1 - w) v(z_t): CFG at scale w, folded into training so
that sampling takes one network call at any w in the trained range. (Dropped captions, diffusion.caption_dropout,
train the unconditional field the guided target uses.)

Times (MF section 4.3): two logit-normal draws, t the larger and r the smaller; a fraction `equal_fraction` has r = t
(plain flow matching: MF uses 75%), whose rows need no JVP ((t - r) du/dt = 0): they take one ordinary call. Adaptive loss weight (MF section 4.3): each example's mean squared error d is
weighted by sg(1 / (d + c)^p) (p = 1: a robust, scale-free loss; p = 0: plain mean squared error).

The network receives 1000 t as its time (flow.py's scale), r in the same units (the backbones embed t - r) and w.
What iMF adds that is left out here: its in-context (token) conditioning and the guidance-interval inputs.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion.errors import UserError, check_choice
from diffusion.noise_schedules import expand_like
from diffusion.objectives.base import Objective

LOSSES = ("imf", "mf")


def logit_normal(n: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """n draws of sigmoid(mean + std N(0, 1)) (SD3's time density; MF Table 1d), float64 [n]."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, dtype=torch.float64))


def average_velocity_and_derivative(u_fn, z: torch.Tensor, time: torch.Tensor, tangent: torch.Tensor,
                                    time_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, du/dt) of u_fn(z, time) along dz/dt = tangent, d time/dt = time_rate, from one forward-mode JVP (MF eq. 8).

    The attention runs on PyTorch's math path: the fused CPU / CUDA kernels have no forward-mode derivative."""
    with sdpa_kernel(SDPBackend.MATH):
        return jvp(u_fn, (z, time), (tangent, torch.full_like(time, time_rate)))


class MeanFlowObjective(Objective):
    name = "meanflow"
    sampler_families = ("meanflow",)

    def __init__(self, loss: str = "imf", equal_fraction: float = 0.75, logit_mean: float = -0.4, logit_std: float = 1.0,
                 guidance_max: float = 5.0, adaptive_power: float = 1.0, adaptive_eps: float = 1e-3,
                 timestep_scale: float = 1000.0):
        check_choice("objective.loss", loss, LOSSES)
        if not 0 <= equal_fraction <= 1:
            raise UserError(f"objective.equal_fraction must be in [0, 1] (the share of r = t), got {equal_fraction}")
        if not logit_std > 0:
            raise UserError(f"objective.logit_std must be > 0, got {logit_std}")
        if not guidance_max >= 1:
            raise UserError(f"objective.guidance_max must be >= 1 (1: no guidance input), got {guidance_max}")
        if not (adaptive_power >= 0 and adaptive_eps > 0):
            raise UserError(f"objective.adaptive_power must be >= 0 and adaptive_eps > 0, got {adaptive_power}, {adaptive_eps}")
        self.loss_kind, self.equal_fraction = loss, float(equal_fraction)
        self.logit_mean, self.logit_std, self.guidance_max = float(logit_mean), float(logit_std), float(guidance_max)
        self.adaptive_power, self.adaptive_eps, self.timestep_scale = float(adaptive_power), float(adaptive_eps), float(timestep_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_max > 1

    @property
    def network_inputs(self) -> tuple[str, ...]:
        return ("r", "guidance") if self.guided else ("r",)

    # -------- training: "times" are [B, 3] rows (t, r, w), so the loop draws and slices them like any objective's t
    def draw_times(self, n, generator):
        """(t, r, w) per row with r < t; which rows train at r = t instead is decided by position (`moving_rows`)."""
        first, second = (logit_normal(n, self.logit_mean, self.logit_std, generator) for _ in range(2))
        t, r = torch.maximum(first, second), torch.minimum(first, second)
        w = 1 + (self.guidance_max - 1) * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([t, r, w], dim=1)  # [n, 3]

    def moving_rows(self, n: int) -> int:
        """How many of a micro-batch's n rows (the first ones) train at r < t; the others at r = t. A fixed count per
        micro-batch (rows are exchangeable: shuffled data, i.i.d. times) instead of MF's per-row coin: the same share
        (rounded up, so a tiny batch still has one), known from the shape alone, so the r = t rows skip the JVP their
        zero (t - r) would discard, without reading a value on the host."""
        return min(n, math.ceil(round((1 - self.equal_fraction) * n, 6)))

    def noisy(self, x0, noise, times):
        t = expand_like(times[:, 0], x0)
        return (1 - t) * x0 + t * noise

    def training_loss(self, network, x0, noise, times):
        """Per-example loss [B]. `network(x, time, unconditional=False, rows=slice(None), **times)`: the model on the
        micro-batch's prompts of `rows`. Rows [0, k) take the JVP; rows [k, B) have r = t, where V = u(z, t, t) (the
        (t - r) du/dt term is 0): plain guided flow matching, one ordinary call."""
        n, k = x0.shape[0], self.moving_rows(x0.shape[0])
        t, r, w = times.unbind(1)  # [B] each
        r = torch.cat([r[:k], t[k:]])  # rows k.. at r = t
        z = self.noisy(x0, noise, times).to(x0.dtype)
        time, r_time = self.model_time(t), self.model_time(r)
        v_guided = self.guided_velocity(network, z, time, noise - x0, w)
        errors = []  # per-example mean squared errors, rows [0, k) then [k, n)
        if k > 0:
            errors.append(self.moving_error(network, z[:k], time[:k], r_time[:k], (t - r)[:k], w[:k], v_guided[:k]))
        if k < n:
            rows = slice(k, n)
            u = network(z[rows], time[rows], rows=rows, r=time[rows], **self.guidance_input(w[rows]))
            errors.append(((u.float() - v_guided[rows].float()) ** 2).flatten(1).mean(dim=1))
        return self.adaptive(torch.cat(errors))

    def moving_error(self, network, z, time, r_time, gap, w, v_guided):
        """Squared error [k] of the rows [0, k) with r < t: the JVP along (v, 0, 1) and either loss (module docstring)."""
        k = z.shape[0]
        guidance = self.guidance_input(w)

        def u_fn(z_in, time_in):  # u_theta(z, r, t | prompt, w), with t (and so t - r) moving and r held
            return network(z_in, time_in, rows=slice(0, k), r=r_time, **guidance)

        if self.loss_kind == "imf":
            with torch.no_grad():  # the network's own instantaneous velocity u(z, t, t) as the JVP's dz/dt
                tangent = network(z, time, rows=slice(0, k), r=time, **guidance)
        else:
            tangent = v_guided
        u, du_dt = average_velocity_and_derivative(u_fn, z, time, tangent.to(z.dtype), self.timestep_scale)
        gap = expand_like(gap, z).to(z.dtype)
        if self.loss_kind == "imf":
            prediction, target = u + gap * du_dt.detach(), v_guided  # V_theta onto v_g (iMF's v-loss)
        else:
            prediction, target = u, (v_guided - gap * du_dt).detach()  # u_theta onto sg(u_tgt) (MF eq. 10)
        return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)

    def guidance_input(self, w: torch.Tensor) -> dict:
        return {"guidance": w} if self.guided else {}

    def guided_velocity(self, network, z, time, v_conditional, w):
        """v_g = w (eps - x0) + (1 - w) sg(u(z, t, t | no prompt)): classifier-free guidance at scale w in the target."""
        if not self.guided:
            return v_conditional
        with torch.no_grad():
            v_unconditional = network(z, time, unconditional=True, r=time, guidance=torch.ones_like(w))
        w = expand_like(w, z).to(z.dtype)
        return w * v_conditional + (1 - w) * v_unconditional.to(z.dtype)

    def adaptive(self, squared_error: torch.Tensor) -> torch.Tensor:
        """MF section 4.3: sg(1 / (d + c)^p) d per example."""
        if self.adaptive_power == 0:
            return squared_error
        return squared_error / (squared_error.detach() + self.adaptive_eps) ** self.adaptive_power

    def loss(self, model_output, x0, noise, x_t, t):
        raise NotImplementedError("MeanFlow's loss needs the network itself (a JVP): see training_loss")

    # -------- both
    def model_time(self, t):
        return t * self.timestep_scale

    def denoise(self, model_output, x_t, t):
        """x0 = z_t - t u(z_t, 0, t): exact when the output is u over the whole [0, t]."""
        t = expand_like(torch.as_tensor(t, dtype=torch.float64), x_t)
        return x_t - t * model_output

    def check_guidance_scale(self, scale: float) -> None:
        """The scale a sampling run asks for must be one the network was trained at (it is an input, not a mix)."""
        if not 1 <= scale <= self.guidance_max:
            trained = f"[1, {self.guidance_max:g}]" if self.guided else "1 only (trained without guidance)"
            raise UserError(f"guidance_scale={scale:g} is outside what this MeanFlow model was trained for: use "
                            f"guidance_scale in {trained}")

    def __repr__(self):
        return (f"MeanFlowObjective(loss={self.loss_kind}, equal_fraction={self.equal_fraction}, logit_mean="
                f"{self.logit_mean}, logit_std={self.logit_std}, guidance_max={self.guidance_max})")
