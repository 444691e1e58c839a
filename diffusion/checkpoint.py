"""Checkpoints: one file, a dict of tensors and plain Python values, written atomically, read safely.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then `os.replace`d
over the target: a process killed at any instant leaves either the old file or the new one, never
half of one. Reading uses `torch.load(weights_only=True)`, which refuses any pickle that would
construct objects other than tensors and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from diffusion.errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Read a checkpoint of this project; every way it can be wrong is one clear `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give the path to a .ckpt file, e.g. outputs/<date>/<time>/checkpoints/last.ckpt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise UserError(f"refusing to load {path}: it is not a plain-data checkpoint ({first[:120]}); for published "
                        f"weights, give the .safetensors file of the same weights") from None
    except Exception as error:  # any other failure to parse means a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path}: the file is corrupt or not a checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UserError(f"{path} is not a checkpoint of this project (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {payload['format_version']}; this code reads version "
                        f"{FORMAT_VERSION}: use the matching release of the code, or retrain")
    if kind is not None and payload.get("kind") != kind:
        raise UserError(f"{path} is a {payload.get('kind')!r} checkpoint; a {kind!r} checkpoint is needed here")
    return payload


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files that writers killed mid-save left behind (they are never read)."""
    for stale in Path(directory).glob(".*.ckpt.*.tmp"):
        stale.unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Periodic checkpoints `step_XXXXXXX.ckpt`, oldest first."""
    return sorted(Path(directory).glob("step_*.ckpt"))


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` periodic checkpoints (last.ckpt is never pruned)."""
    periodic = list_checkpoints(directory)
    for old in periodic[: max(0, len(periodic) - keep_last)]:
        old.unlink(missing_ok=True)


def find_resumable(search_dirs: list[Path], accept=None) -> Path | None:
    """The newest checkpoint that loads (and that `accept(payload)` accepts, when given), across the given run
    folders (for resume=auto)."""
    candidates = []
    for directory in search_dirs:
        candidates += list(Path(directory).glob("checkpoints/*.ckpt"))
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            payload = load_checkpoint(candidate)
        except UserError:
            continue
        if accept is None or accept(payload):
            return candidate
    return None
