"""Finding the checkpoint to resume from, and the random-number state that goes with it."""

from __future__ import annotations

import os
import shutil
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
        keep_first_record(run_dir, resuming=False, fresh=held is None)
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
            keep_first_record(run_dir, resuming=False, fresh=True)
            return None
        print(f"resume=auto: resuming from {path}")
    else:
        path = Path(str(cfg.resume))
    try:
        payload = load_checkpoint(path, kind=kind)
    except UserError:
        keep_first_record(run_dir, resuming=False)  # a refused resume leaves the run's record as it was
        raise
    payload["_path"] = str(path)
    keep_first_record(run_dir, resuming=True)
    if finished(payload, cfg):
        print(f"resume: {path} is already at step {payload['step']} >= trainer.max_steps={cfg.trainer.max_steps}; "
              f"nothing to train, nothing written (raise trainer.max_steps to continue)")
    return payload


def finished(payload: dict | None, cfg) -> bool:
    """Whether a resumed checkpoint has already reached trainer.max_steps (then the loop writes nothing)."""
    return payload is not None and int(payload.get("step", 0)) >= int(cfg.trainer.max_steps)


HYDRA_RECORD = ("overrides", "config")  # what Hydra rewrites in <run>/.hydra/ on every run into the same folder


def keep_first_record(run_dir: Path, resuming: bool, fresh: bool = False) -> None:
    """The run folder's .hydra/overrides.yaml and config.yaml describe the run's first command. Hydra rewrites them
    on every command into the folder, so the first ones are saved (first-<name>.yaml) and put back after each later
    command; a resume's own are recorded beside them as resume-<n>-<name>.yaml; a `fresh` start (a folder without a
    checkpoint) begins the record anew. (Rank 0 only.)"""
    hydra_dir = run_dir / ".hydra"
    if int(os.environ.get("RANK", "0")) != 0 or not (hydra_dir / "overrides.yaml").is_file():
        return  # run without Hydra's record (train(cfg) from Python)
    number = 1 + len(list(hydra_dir.glob("resume-*-overrides.yaml")))
    for name in HYDRA_RECORD:
        current, first = hydra_dir / f"{name}.yaml", hydra_dir / f"first-{name}.yaml"
        if not current.is_file():
            continue
        if fresh or not first.is_file():  # the folder's first command (or a run from before this record: its resume's)
            shutil.copyfile(current, first)
            if fresh:
                continue
        if resuming:
            shutil.copyfile(current, hydra_dir / f"resume-{number}-{name}.yaml")
        shutil.copyfile(first, current)


def put_back_first_record(run_dir: Path) -> None:
    """After a refused command into a run folder: its first overrides.yaml and config.yaml, as they were."""
    for name in HYDRA_RECORD:
        first = run_dir / ".hydra" / f"first-{name}.yaml"
        if first.is_file() and int(os.environ.get("RANK", "0")) == 0:
            shutil.copyfile(first, run_dir / ".hydra" / f"{name}.yaml")


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
