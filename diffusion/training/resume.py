"""Finding the checkpoint to resume from, and the random-number state that goes with it."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.checkpoint import find_resumable, load_checkpoint
from diffusion.errors import UserError


def resolve_resume(cfg, run_dir: Path, kind: str) -> dict | None:
    """resume=null: start fresh — refused in a run folder that already holds a run, which a fresh start would
    overwrite; resume=<file>: that checkpoint; resume=auto: the newest loadable checkpoint in this run folder; else,
    for a run in the default layout outputs/<date>/<time>/, the newest checkpoint among the other runs there whose
    config fits (same task, network and resolution); else fresh. A run folder given by hand
    (hydra.run.dir=...) is searched alone: an unrelated run is never continued."""
    if cfg.resume in (None, "", False):
        held = find_resumable([run_dir])
        if held is not None:
            step = load_checkpoint(held).get("step")
            raise UserError(f"{run_dir} already holds a run ({held.name} at step {step}); continue it with resume=auto, "
                            f"or give another hydra.run.dir (nothing was changed)")
        return None
    if cfg.resume == "auto":
        path = find_resumable([run_dir])
        root = run_dir.parent.parent
        if path is None and root.name == "outputs":  # the default layout outputs/<date>/<time>: its newest fitting run
            others = [p for p in root.glob("*/*") if p.is_dir() and p.resolve() != run_dir.resolve()]
            path = find_resumable(others, accept=lambda payload: fits(payload, cfg, kind))
        if path is None:
            where = f"{run_dir}" + (f" or the other runs under {root}" if root.name == "outputs" else "")
            print(f"resume=auto: no checkpoint of this model in {where}; starting from scratch")
            return None
        print(f"resume=auto: resuming from {path}")
    else:
        path = Path(str(cfg.resume))
    payload = load_checkpoint(path, kind=kind)
    payload["_path"] = str(path)
    if int(payload.get("step", 0)) >= int(cfg.trainer.max_steps):
        print(f"resume: {path} is already at step {payload['step']} >= trainer.max_steps={cfg.trainer.max_steps}; "
              f"nothing to train (raise trainer.max_steps to continue)")
    return payload


def fits(payload: dict, cfg, kind: str) -> bool:
    """Whether a checkpoint is of the run `cfg` describes: the same kind, network class and image resolution."""
    from omegaconf import OmegaConf

    if payload.get("kind") != kind:
        return False
    try:
        stored = OmegaConf.create(payload["config"])
    except Exception:  # noqa: BLE001 (an unreadable stored config fits nothing)
        return False
    network = "vae" if kind == "vae" else "model"
    if stored.get("task", "diffusion") != cfg.get("task", "diffusion"):  # a student never continues its teacher's run
        return False
    return (OmegaConf.select(stored, f"{network}._target_") == OmegaConf.select(cfg, f"{network}._target_")
            and OmegaConf.select(stored, "dataset.resolution") == OmegaConf.select(cfg, "dataset.resolution"))


def rng_state() -> dict:
    """Torch's global generators (dropout uses them); the loop's own draws are seeded per step."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
