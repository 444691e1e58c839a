"""Checkpoints: one file, a dict of tensors and plain Python values, written atomically, read safely.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then `os.replace`d
over the target: a process killed at any instant leaves either the old file or the new one, never
half of one. Reading uses `torch.load(weights_only=True)`, which refuses any pickle that would
construct objects other than tensors and plain containers, so a crafted file cannot run code.

The weights (`model`, `ema`) carry a checksum written at save and verified at load, so flipped bits are named,
never sampled; and the fields a diffusion or autoencoder checkpoint must hold are checked against one schema
(`FIELDS`), so a truncated, hand-edited or crafted file is refused in one line naming the field.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

from diffusion.errors import UserError, write_error

FORMAT_VERSION = 1
CHECKSUMMED = ("model", "ema")  # the weights' fields; a checkpoint from before checksums has none and is accepted


def is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_data_info(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("shape"), list) and len(value["shape"]) == 3
            and all(is_int(v) and v > 0 for v in value["shape"]) and is_int(value.get("resolution", 1)))


# field -> (the check, what it must be), per checkpoint kind; other fields are free
FIELDS = {
    "diffusion": {
        "step": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "model": (is_state_dict, "a dict of tensors"),
        "ema": (is_state_dict, "a dict of tensors"),
        "config": (lambda v: isinstance(v, str), "the config as YAML text"),
        "data": (is_data_info, "a dict with shape [C, H, W] and resolution"),
        "tokenizer": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("vocabulary"), list)),
                      "null or a dict with a vocabulary list"),
        "autoencoder": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("fingerprint"), str)),
                        "null or a dict naming the autoencoder"),
    },
    "vae": {
        "step": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "model": (is_state_dict, "a dict of tensors"),
        "config": (lambda v: isinstance(v, str), "the config as YAML text"),
    },
}


def weights_fingerprint(state_dict: dict) -> str:
    """A content hash of weights (names, dtypes, shapes and bytes): names them independently of where their file
    lies (a latent model names its autoencoder by it) and checks a checkpoint's weights at load."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def checksums(payload: dict) -> dict:
    return {field: weights_fingerprint(payload[field]) for field in CHECKSUMMED if is_state_dict(payload.get(field))}


def check_payload(payload: dict, path) -> None:
    """The schema of its kind, then the weights against the checksum written at save: one line naming the field."""
    for field, (ok, what) in FIELDS.get(payload.get("kind"), {}).items():
        if field not in payload:
            raise UserError(f"{path}: the checkpoint has no {field!r} field (it must be {what}); the file was cut short "
                            f"or edited: use another checkpoint")
        if not ok(payload[field]):
            raise UserError(f"{path}: the checkpoint's {field!r} field is not {what}; the file was damaged or edited")
    stored = payload.get("checksum")
    if stored is None:
        return
    if not isinstance(stored, dict):
        raise UserError(f"{path}: the checkpoint's 'checksum' field is damaged")
    for field, value in checksums(payload).items():
        if stored.get(field) != value:
            raise UserError(f"{path}: the {field!r} weights do not match the checksum written when the file was saved "
                            f"(flipped bits, or an edit); use another checkpoint")


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    payload["checksum"] = checksums(payload)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        failed = write_error(error, path)
        if failed is not None:
            kept = f"; {path.name} is unchanged" if path.exists() else ""
            raise UserError(f"{failed}{kept} (free some space; a training run then continues with resume=auto)") from None
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
    check_payload(payload, path)
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
