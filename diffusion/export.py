"""`python -m diffusion.export ckpt=<this project's .ckpt> out=<file.safetensors>`: a trained model as a weights file
the ecosystem reads — safetensors tensors (no pickle) with the config beside them in the file's metadata.

    python -m diffusion.export ckpt=outputs/<date>/<time>/checkpoints/last.ckpt out=birds.safetensors
    python sample.py ckpt=birds.safetensors prompt="a red bird"          # load_model reads it back, bit for bit

The tensors are the model's weights (EMA unless use_ema=false), under the names `model.state_dict()` gives; the
metadata holds the training config (YAML), the data shape, the tokenizer's vocabulary, the autoencoder it was trained
with and the step, as strings (safetensors' metadata is a str -> str map). Nothing is overwritten unless
overwrite=true; the file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


from diffusion.errors import UserError

FORMAT = "diffusion-from-scratch"
FORMAT_VERSION = "1"
KEYS = {"ckpt": None, "out": None, "use_ema": "true", "overwrite": "false"}
JSON_FIELDS = ("data", "tokenizer", "autoencoder", "cost")


def strict_bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise UserError(f"{key}={value}: use true or false")


def export(ckpt, out, use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write `ckpt`'s weights and config to `out` (.safetensors); returns `out`."""
    from safetensors.torch import save_file

    from diffusion.checkpoint import load_checkpoint
    from diffusion.model import legacy_keys

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"out={out}: the export is a .safetensors file; name it <something>.safetensors")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another out or add overwrite=true (nothing was written)")
    payload = load_checkpoint(ckpt, kind="diffusion")
    weights = legacy_keys(payload["ema" if use_ema else "model"])
    tensors = {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "diffusion", "config": payload["config"],
                "step": str(int(payload["step"])), "use_ema": str(bool(use_ema)).lower(), "exported_from": str(ckpt),
                **{field: json.dumps(payload.get(field)) for field in JSON_FIELDS}}
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(descriptor)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out


def is_export(path: Path) -> bool:
    """Whether a .safetensors file is this project's export (by its metadata, not its name)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as file:
            return (file.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 (unreadable: the published-format reader names what is wrong)
        return False


def read_export(path: Path) -> dict:
    """An export as the payload `diffusion.model.open_payload` takes (its weights as both `model` and `ema`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is a version {metadata.get('format_version')} export; this code reads version {FORMAT_VERSION}")
    weights = load_file(path)
    try:
        fields = {field: json.loads(metadata[field]) for field in JSON_FIELDS}
        return {"kind": "diffusion", "step": int(metadata["step"]), "config": metadata["config"], "model": weights,
                "ema": weights, **fields}
    except (KeyError, ValueError) as error:
        raise UserError(f"{path}: the export's metadata is damaged ({type(error).__name__}: {error})") from None


def main(argv: list[str]) -> None:
    values = dict(KEYS)
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep or key not in KEYS:
            raise UserError(f"unknown argument {argument!r}: use ckpt=<file> out=<file.safetensors> [use_ema=true|false] "
                            f"[overwrite=true|false]")
        values[key] = value
    if not values["ckpt"] or not values["out"]:
        raise UserError("give ckpt=<this project's .ckpt> and out=<file.safetensors>")
    out = export(values["ckpt"], values["out"], strict_bool("use_ema", values["use_ema"]),
                 strict_bool("overwrite", values["overwrite"]))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): python sample.py ckpt={out} prompt=...")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
