"""Finding the checkpoint to resume from, and the random-number state that goes with it."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.checkpoint import find_resumable, load_checkpoint
from diffusion.errors import UserError


def resolve_resume(cfg, run_dir: Path, kind: str) -> dict | None:
    """resume=null: start fresh — refused in a run folder that already holds a run, which a fresh start would
    overwrite; resume=<file>: that checkpoint; resume=auto: the newest loadable checkpoint in this run folder,
    else in the newest sibling run (outputs/<date>/<time>/), else fresh."""
    if cfg.resume in (None, "", False):
        held = find_resumable([run_dir])
        if held is not None:
            step = load_checkpoint(held).get("step")
            raise UserError(f"{run_dir} already holds a run ({held.name} at step {step}); continue it with resume=auto, "
                            f"or give another hydra.run.dir (nothing was changed)")
        return None
    if cfg.resume == "auto":
        here = [run_dir]
        siblings = sorted(run_dir.parent.parent.glob("*/*"), key=lambda p: p.stat().st_mtime, reverse=True)
        path = find_resumable(here) or find_resumable([p for p in siblings if p != run_dir])
        if path is None:
            print("resume=auto: no checkpoint found, starting from scratch")
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
