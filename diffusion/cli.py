"""What `train.py` and `sample.py` share around Hydra: user errors as one line, and prompts typed as in a shell.

- A mistake a user can make (a bad override, a missing file, a value out of range) prints
  ``error: <what was wrong and what to do>`` and exits with status 2, with no traceback.
- Values that are free text or paths (`prompt="a red bird, facing left"`) are quoted for Hydra,
  whose override grammar would otherwise read the comma as a sweep.
"""

from __future__ import annotations

import functools
import re
import sys

from diffusion.config import CONF_DIR
from diffusion.errors import UserError

# keys whose values are free text or file paths, never Hydra expressions
FREE_TEXT_KEYS = ("prompt", "negative_prompt", "init_image", "ckpt", "out_dir", "resume", "dataset.path",
                  "paths.data_dir", "prompts_file", "vae.ckpt", "vae_ckpt")


# of those, the keys whose values are literal text: `${...}` in a prompt is words, never an interpolation
LITERAL_TEXT_KEYS = ("prompt", "negative_prompt")


def quote_for_hydra(value: str, literal: bool = False) -> str:
    """Wrap a free-text value in single quotes for Hydra's grammar: quotes escaped, and backslashes only where they
    precede a quote or end the text (elsewhere Hydra keeps them as typed); with `literal`, `${` escaped too, so
    OmegaConf reads it as text."""
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return "'" + (escape_interpolation(value) if literal else value) + "'"


def escape_interpolation(value: str) -> str:
    return value.replace("${", "\\${")


def quote_free_text(argv: list[str]) -> list[str]:
    """`prompt=a red bird, facing left` -> `prompt='a red bird, facing left'` (lists `[...]` and values the user
    already quoted are left alone, but for the `${` of literal text; a path may hold an interpolation)."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare_key = key.lstrip("+~")
        literal = bare_key in LITERAL_TEXT_KEYS
        if sep and bare_key in FREE_TEXT_KEYS and value and value[0] not in "'\"[" and (literal or not value.startswith("${")):
            arg = f"{key}={quote_for_hydra(value, literal)}"
        elif sep and literal:
            arg = f"{key}={escape_interpolation(value)}"
        quoted.append(arg)
    return quoted


def one_line(error: BaseException) -> str:
    """Hydra's multi-line composition errors, folded into one line that keeps the useful parts."""
    text = str(error)
    cause = error.__cause__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Available options" in text:
        head = lines[0].replace("In 'train': ", "").replace("In 'sample': ", "")
        options = [line for line in lines[lines.index(next(l for l in lines if l.startswith("Available options"))) + 1:]
                   if not line.startswith("Config search path") and ":" not in line]
        return f"{head}; available: {', '.join(options)}"
    if lines and lines[0].startswith("Could not override"):
        key = re.search(r"'([^']+)'", lines[0])
        name = key.group(1) if key else "?"
        moved = moved_key_hint(name)
        if moved:
            return moved
        return (f"unknown config key '{name}' (see the keys with --cfg job; add a new key with +{name}=...)")
    if cause is not None and str(cause).strip():
        return f"{lines[0] if lines else type(error).__name__} ({str(cause).strip().splitlines()[0]})"
    return " ".join(lines)[:400] or type(error).__name__


# keys that became the `objective` config group (python train.py objective=flow objective.shift=3)
MOVED_TO_OBJECTIVE = ("diffusion.prediction_type", "diffusion.loss_weighting", "diffusion.min_snr_gamma")


def moved_key_hint(name: str) -> str | None:
    """The one line for a key of the old `diffusion.*` objective settings, which now live in the objective group."""
    if name == "diffusion.objective":
        return "diffusion.objective is now the config group `objective`: use objective=ddpm | flow | edm"
    if name in MOVED_TO_OBJECTIVE:
        return f"{name} moved to the objective group: use objective.{name.split('.', 1)[1]}=..."
    for old in ("diffusion.flow.", "diffusion.edm."):
        if name.startswith(old):
            return (f"{name} moved to the objective group: use objective={old.split('.')[1]} "
                    f"objective.{name[len(old):]}=...")
    return None


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose the config once before Hydra runs, so that a bad override is one line, not a traceback."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=plain)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(one_line(error)) from None


def run_user_command(main, config_name: str) -> None:
    """Run a `@hydra.main` function with quoted free text, checked overrides and one-line user errors."""
    argv = quote_free_text(sys.argv[1:])
    flags = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion",
             "-sc", "--version", "--resolve", "-p", "--package", "--config-name", "-cn", "--config-path", "-cp",
             "--config-dir", "-cd", "--experimental-rerun"}
    try:
        if not any(arg.split("=")[0] in flags for arg in argv):
            check_overrides(config_name, argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    main()


def report_user_errors(function):
    """Decorator for the body of a `@hydra.main` function: a `UserError` becomes one line and exit status 2."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    return wrapper
