"""Post-hoc EMA (Karras et al. 2024, EDM2, Section 3 and Algorithms 2-3): choose the EMA length after training.

Training tracks a few power-function EMA profiles and writes their snapshots every N steps; any other length
(sigma_rel) is then reconstructed as the least-squares combination of the snapshots' weight profiles.

    python -m diffusion.training.posthoc_ema <run dir> sigma_rel=0.07 [out=<file.ckpt>] [overwrite=true]

The power-function EMA of exponent gamma at step t (counted from 1) is theta_hat_t = beta_t theta_hat_{t-1} +
(1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1) (EDM2 eq. 3). Unrolled, theta_tau's weight is
(tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1): exactly the integral over [tau - 1, tau] of the density
(gamma + 1) tau^gamma / t^(gamma+1) on [0, t], so the continuous inner products below are exact for the discrete EMA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion import checkpoint as ckpt
from diffusion.errors import UserError

# gamma > 0: the uniform average (gamma = 0) is the widest profile that does not favour the early weights
MAX_SIGMA_REL = 1 / (2 * np.sqrt(3))


def gamma_to_sigma_rel(gamma):
    """The profile's standard deviation relative to its length (EDM2 eq. 4)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.sqrt(gamma + 1) / ((gamma + 2) * np.sqrt(gamma + 3))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The largest real root of gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0
    (eq. 4 solved for gamma); a `UserError` outside 0 < sigma_rel < 1 / (2 sqrt 3) (gamma > 0)."""
    sigma_rel = float(sigma_rel)
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise UserError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}) (a power-function EMA with gamma > 0), "
                        f"got {sigma_rel:g}; EDM2's useful range is about 0.05-0.20")
    inverse = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<f_a, f_b> = integral of f_a f_b over [0, inf) for the densities f(tau) = (gamma + 1) tau^gamma / t^(gamma+1)
    on [0, t] (broadcast, float64). With m = min(t_a, t_b) the integral is (g_a+1)(g_b+1) m^(g_a+g_b+1) /
    ((g_a+g_b+1) t_a^(g_a+1) t_b^(g_b+1)), written as a ratio of times so it neither overflows nor underflows."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t_ratio = t_a / t_b
    t_exp = np.where(t_a < t_b, gamma_b, -gamma_a)
    t_max = np.maximum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * t_ratio ** t_exp / t_max


def reconstruction_coefficients(stored_t, stored_gamma, target_t, target_gamma) -> np.ndarray:
    """X minimising || sum_i X_i f_i - f_target ||^2 over the stored profiles (EDM2 Algorithm 3): A X = B with A the
    stored profiles' Gram matrix and B their inner products with the target. Shape (number stored,)."""
    return reconstruction_fit(stored_t, stored_gamma, target_t, target_gamma)[0]


def reconstruction_fit(stored_t, stored_gamma, target_t, target_gamma) -> tuple[np.ndarray, float]:
    """The coefficients X, and the fit's relative error || sum_i X_i f_i - f_target || / || f_target ||."""
    stored_t, stored_gamma = np.asarray(stored_t, np.float64).ravel(), np.asarray(stored_gamma, np.float64).ravel()
    gram = power_profile_inner_product(stored_t[:, None], stored_gamma[:, None], stored_t[None, :], stored_gamma[None, :])
    target = power_profile_inner_product(stored_t, stored_gamma, float(target_t), float(target_gamma))
    # least squares rather than solve: snapshots of near-equal profiles make A nearly singular
    x = np.linalg.lstsq(gram, target, rcond=None)[0]
    norm = power_profile_inner_product(target_t, target_gamma, target_t, target_gamma)
    squared_error = norm - 2 * x @ target + x @ gram @ x
    return x, float(np.sqrt(max(squared_error, 0.0) / norm))


def float_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.dtype.is_floating_point}


class PowerFunctionEMA:
    """One power-function EMA profile of the model's float parameters (buffers are the run's own, in its EMA)."""

    def __init__(self, model: nn.Module, gamma: float):
        self.gamma = float(gamma)
        self.weights = {name: p.clone() for name, p in float_parameters(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (0-based, so t = step + 1): theta_hat <- lerp(theta_hat, theta, 1 - beta_t).
        beta_t comes from the host-side step count: no device value is read."""
        t = step + 1
        beta = (1 - 1 / t) ** (self.gamma + 1)
        torch._foreach_lerp_(list(self.weights.values()), list(float_parameters(model).values()), 1 - beta)

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        if set(state["weights"]) != set(self.weights):
            raise UserError("the checkpoint's post-hoc EMA profiles do not fit this model; resume with the config it "
                            "was trained with")
        self.gamma = float(state["gamma"])
        for name, tensor in state["weights"].items():
            self.weights[name].copy_(tensor)


class PosthocSnapshots:
    """The training run's side of post-hoc EMA: one profile per sigma_rel, snapshots every `every` steps in
    <run dir>/posthoc_ema/snapshot_<step>.pt."""

    def __init__(self, model: nn.Module, sigma_rels, every: int, run_dir: Path):
        if int(every) < 0 or not sigma_rels:
            raise UserError(f"trainer.posthoc_ema needs every >= 0 and at least one sigma_rel, got every={every}, "
                            f"sigma_rels={list(sigma_rels)}")
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.every, self.folder = int(every), Path(run_dir) / "posthoc_ema"
        self.profiles = [PowerFunctionEMA(model, sigma_rel_to_gamma(s)) for s in self.sigma_rels]
        self.saved_step = None

    def update(self, model: nn.Module, step: int) -> None:
        for profile in self.profiles:
            profile.update(model, step)

    def save(self, step: int, final: bool = False) -> None:
        """A snapshot at every `every`-th step and at the end (once per step)."""
        if (step % self.every and not final) or step == self.saved_step or step == 0:
            return
        ckpt.save_checkpoint({"step": step, "sigma_rels": self.sigma_rels, "gammas": [p.gamma for p in self.profiles],
                              "weights": [{k: v.cpu() for k, v in p.weights.items()} for p in self.profiles]},
                             self.folder / f"snapshot_{step:07d}.pt")
        self.saved_step = step

    def state_dict(self) -> dict:
        return {"sigma_rels": self.sigma_rels, "profiles": [p.state_dict() for p in self.profiles]}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:  # a run that did not track profiles before: they start from the weights at the resume
            print("note: the resumed checkpoint has no post-hoc EMA profiles; they start from its weights", file=sys.stderr)
            return
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise UserError(f"the checkpoint tracked trainer.posthoc_ema.sigma_rels={state['sigma_rels']}, not "
                            f"{self.sigma_rels}; resume with the same values")
        for profile, saved in zip(self.profiles, state["profiles"]):
            profile.load_state_dict(saved)


def snapshot_paths(run_dir: Path) -> list[Path]:
    paths = sorted((Path(run_dir) / "posthoc_ema").glob("snapshot_*.pt"))
    if not paths:
        raise UserError(f"no post-hoc EMA snapshots in {Path(run_dir) / 'posthoc_ema'}: train with "
                        f"trainer.posthoc_ema.every=<steps> (e.g. 1000) to write them")
    return paths


def reconstruct(snapshots: list, sigma_rel: float) -> tuple[dict[str, torch.Tensor], int, np.ndarray, float]:
    """The float parameters of the EMA with `sigma_rel` at the last snapshot's step, that step, the coefficients
    and the fit's relative error. `snapshots`: snapshot dicts, or their files (read twice, one at a time, so
    memory holds one snapshot and the sum, however many there are)."""
    def read(snapshot) -> dict:
        return ckpt.load_checkpoint(snapshot) if isinstance(snapshot, Path) else snapshot

    gamma = sigma_rel_to_gamma(sigma_rel)
    stored_t, stored_gamma = [], []
    for snapshot in snapshots:
        header = read(snapshot)
        stored_t += [header["step"]] * len(header["gammas"])
        stored_gamma += list(header["gammas"])
    target_t = max(stored_t)
    coefficients, fit_error = reconstruction_fit(stored_t, stored_gamma, target_t, gamma)
    combined, dtypes, x = {}, {}, iter(coefficients)
    for snapshot in snapshots:
        for weights in read(snapshot)["weights"]:
            coefficient = next(x)
            for name, tensor in weights.items():
                combined[name] = combined.get(name, 0) + coefficient * tensor.double()
                dtypes[name] = tensor.dtype
    return {name: tensor.to(dtypes[name]) for name, tensor in combined.items()}, target_t, coefficients, fit_error


def write_posthoc_checkpoint(run_dir, sigma_rel: float, out=None, overwrite: bool = False) -> tuple[Path, float]:
    """A copy of the run's last.ckpt whose "ema" weights are the reconstructed EMA of `sigma_rel`; its path and the
    fit's relative error."""
    run_dir = Path(run_dir)
    weights, step, _, fit_error = reconstruct(snapshot_paths(run_dir), sigma_rel)
    out = Path(out) if out else run_dir / "checkpoints" / f"posthoc_ema_{sigma_rel:g}.ckpt"
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; give overwrite=true to replace it, or another out=")
    payload = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.ckpt", kind="diffusion")
    if payload["step"] != step:
        print(f"note: the last snapshot is of step {step}, last.ckpt of step {payload['step']}", file=sys.stderr)
    missing = set(weights) - set(payload["ema"])
    if missing:
        raise UserError(f"the snapshots do not fit {run_dir / 'checkpoints' / 'last.ckpt'} (e.g. {sorted(missing)[0]})")
    payload["ema"] = {**payload["ema"], **weights}
    payload["posthoc_ema_reconstruction"] = {"sigma_rel": sigma_rel, "step": step}  # "posthoc_ema" stays: the profiles
    payload.pop("format_version")
    if fit_error > 0.1:  # EDM2 Fig. 3: lengths well outside the tracked pair are only approximated
        print(f"note: the snapshots approximate sigma_rel={sigma_rel:g} with {100 * fit_error:.0f}% relative error in "
              f"its weight profile; track a closer sigma_rel to reconstruct it well", file=sys.stderr)
    return ckpt.save_checkpoint(payload, out), fit_error


def main(argv: list[str]) -> None:
    usage = ("usage: python -m diffusion.training.posthoc_ema <run dir> sigma_rel=<0..0.288> [out=<file.ckpt>] "
             "[overwrite=true]")
    run_dir, values = None, {"sigma_rel": None, "out": None, "overwrite": "false"}
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep and run_dir is None:
            run_dir = argument
        elif sep and key in values:
            values[key] = value
        else:
            raise UserError(f"unknown argument {argument!r}; {usage}")
    if run_dir is None or values["sigma_rel"] is None:
        raise UserError(f"give the run folder and sigma_rel; {usage}")
    try:
        sigma_rel = float(values["sigma_rel"])
    except ValueError:
        raise UserError(f"sigma_rel must be a number, got {values['sigma_rel']!r}") from None
    if values["overwrite"] not in ("true", "false"):
        raise UserError(f"overwrite must be true or false, got {values['overwrite']!r}")
    sigma_rel_to_gamma(sigma_rel)  # the range, before any file is read
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    out, fit_error = write_posthoc_checkpoint(run_dir, sigma_rel, values["out"], values["overwrite"] == "true")
    print(f"wrote {out} (EMA sigma_rel={sigma_rel:g}; weight profile fitted to {100 * fit_error:.2g}%): "
          f"python sample.py ckpt={out}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
