"""The validated boundary of every command: the type and range of each key a user sets, in one place per command
(`SampleKeys` for sample.py, `TrainKeys` for train.py, `EvaluationArgs` for `python -m diffusion.evaluation`), checked
before any work. A wrong value is one line: ``<key>=<value>: use <what is allowed>``.

Why pydantic rather than Hydra structured configs: the three commands share one schema language, and one of them
(the evaluation) is argparse, not Hydra; a schema here lists only the keys users set, so the config groups
(models, samplers, datasets, each with its own `_target_` and keys) stay plain YAML that other work extends without
touching it; and pydantic's strict types refuse what OmegaConf's typed nodes would convert silently
(`use_ema=maybe`, `steps=2.5`, NaN).

Adding a key = one line in its command's class, e.g. `height: integer("an integer >= 8", ge=8, optional=True)`.
"""

import math
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from diffusion.errors import UserError

SEED_RANGE = 2**64  # any seed in [0, 2**64): torch's generators take exactly these
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def strict_bool(value):
    """true/yes/on/1 -> True, false/no/off/0 -> False (any case); anything else is refused."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("not a boolean")


# A field's type and, in words, what it allows: the error line quotes the words.
def integer(allowed: str, optional: bool = False, **limits):
    kind = Annotated[int, Field(strict=True, **limits)]
    return Annotated[kind | None if optional else kind, Field(description=allowed + (" (or null)" if optional else ""))]


def number(allowed: str, optional: bool = False, **limits):
    kind = Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
    return Annotated[kind | None if optional else kind, Field(description=allowed + (" (or null)" if optional else ""))]


def boolean(optional: bool = False):
    kind = Annotated[bool, BeforeValidator(strict_bool)]
    return Annotated[kind | None if optional else kind,
                     Field(description="true or false (yes/no, on/off, 1/0)" + (" or null" if optional else ""))]


def choice(*options, optional: bool = False):
    kind = Literal[options]
    return Annotated[kind | None if optional else kind,
                     Field(description="one of " + ", ".join(map(str, options)) + (" (or null)" if optional else ""))]


def text(allowed: str = "text", optional: bool = True):
    kind = Annotated[str, Field(strict=True)]
    return Annotated[kind | None if optional else kind, Field(description=allowed + (" (or null)" if optional else ""))]


def pair(allowed: str, **limits):
    one = Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
    return Annotated[tuple[one, one], Field(description=allowed)]


SEED = integer("an integer in [0, 2**64)", ge=0, lt=SEED_RANGE)
COUNT = integer("an integer >= 1", ge=1)
EVERY = integer("an integer >= 0 (0 = off)", ge=0)
POSITIVE = number("a number > 0", gt=0)
PROBABILITY = number("a number in [0, 1)", ge=0, lt=1)


class Keys(BaseModel):
    """A command's keys: other keys may sit beside them (model- and dataset-specific ones, checked where built)."""

    model_config = ConfigDict(extra="allow")


class CostKeys(Keys):
    power_watts: number("a number of watts > 0 (null: measure, else estimate)", optional=True, gt=0) = None


# sample.py -------------------------------------------------------------------------------------------------------
class SampleKeys(Keys):
    ckpt: text("a checkpoint path")
    prompt: Annotated[str | int | float | list[str | int | float] | None, Field(description="text, or a list of texts")]
    prompts_file: text("a text file, one prompt per line")
    negative_prompt: text("text")
    num_images: COUNT
    batch_size: COUNT
    seed: SEED
    steps: integer("an integer >= 1", optional=True, ge=1)
    eta: number("a number in [0, 1]", optional=True, ge=0, le=1)
    guidance_scale: number("a number in [0, 100] (1 = no guidance, 3-7 typical)", ge=0, le=100)
    use_ema: boolean()
    init_image: text("a picture's path")
    strength: number("a number in (0, 1]", optional=True, gt=0, le=1)
    mask: text("a picture's path")
    class_label: integer("an integer >= 0 (a class index)", optional=True, ge=0)
    vae_ckpt: text("an autoencoder checkpoint path")
    height: integer("a whole number of pixels >= 8 (e.g. 512)", optional=True, ge=8) = None
    width: integer("a whole number of pixels >= 8 (e.g. 512)", optional=True, ge=8) = None
    dtype: choice("fp32", "bf16", "fp16") = "fp32"
    tokenizer: text("a folder with CLIP's vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz") = None
    text_encoder: text("a CLIPTextModel folder") = None
    clip_skip: integer("an integer >= 1 (1 = the text model's last layer, 2 = the one before)", optional=True, ge=1) = None
    device: text("auto, cpu, cuda or cuda:N", optional=False)
    out_dir: text("a folder", optional=False)
    cost: CostKeys = CostKeys()


# train.py --------------------------------------------------------------------------------------------------------
class PosthocKeys(Keys):
    sigma_rels: Annotated[list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                          Field(description="a list of numbers, e.g. [0.05,0.10]")]
    every: EVERY


class TrainerKeys(Keys):
    max_steps: COUNT
    batch_size: COUNT
    grad_accum: COUNT
    grad_clip: number("a number >= 0 (0 = off)", ge=0)
    ema_decay: PROBABILITY
    ema_warmup: boolean()
    precision: choice("auto", "fp32", "bf16")
    channels_last: boolean()
    compile: boolean()
    num_workers: integer("an integer >= 0", ge=0)
    log_every: COUNT
    sample_every: EVERY
    sample_num: COUNT
    checkpoint_every: EVERY
    keep_last: integer("an integer >= 0", ge=0)
    max_minutes: number("a number of minutes > 0", optional=True, gt=0)
    fit_schedule_to_time: boolean(optional=True)
    sample_guidance: number("a number in [0, 100]", ge=0, le=100)
    posthoc_ema: PosthocKeys | None = None


class OptimKeys(Keys):
    lr: POSITIVE
    betas: pair("two numbers in [0, 1), e.g. [0.9,0.999]", ge=0, lt=1)
    weight_decay: number("a number >= 0", ge=0)
    eps: POSITIVE
    warmup_steps: integer("an integer >= 0", ge=0)
    decay: choice("cosine", "linear", "constant")
    min_lr_ratio: number("a number in [0, 1]", ge=0, le=1)
    fused: Annotated[Literal["auto"] | Annotated[bool, BeforeValidator(strict_bool)],
                     Field(description="auto, true or false")]
    text_lr_scale: POSITIVE = 1.0


class DatasetKeys(Keys):  # the keys several datasets share; each dataset checks its own others
    resolution: integer("an integer >= 1 (pixels)", ge=1)
    num_images: integer("an integer >= 1", optional=True, ge=1) = None
    seed: SEED = 0
    cache: boolean(optional=True) = None
    random_flip: boolean(optional=True) = None
    path: text("a folder") = None


class DiffusionKeys(Keys):
    caption_dropout: PROBABILITY
    class_conditional: boolean()
    pooled_text: boolean(optional=True) = None
    word_embedding: boolean(optional=True) = None


class LoggerKeys(Keys):
    wandb: boolean(optional=True) = None
    mode: choice("offline", "online", "disabled") = "offline"


class TrainKeys(Keys):
    task: choice("diffusion", "vae")
    seed: SEED
    device: text("auto, cpu, cuda or cuda:N", optional=False)
    resume: text("a checkpoint path, or auto")
    trainer: TrainerKeys
    optim: OptimKeys
    dataset: DatasetKeys
    diffusion: DiffusionKeys
    logger: LoggerKeys = LoggerKeys()
    cost: CostKeys = CostKeys()


# python -m diffusion.evaluation ----------------------------------------------------------------------------------
class EvaluationArgs(Keys):
    num: integer("an integer >= 2 (a covariance needs two images)", ge=2)
    ref_num: integer("an integer >= 2", optional=True, ge=2)
    steps: integer("an integer >= 1", optional=True, ge=1)
    eta: number("a number in [0, 1]", optional=True, ge=0, le=1)
    guidance_scale: number("a number in [0, 100]", ge=0, le=100)
    batch_size: COUNT
    seed: SEED
    seeds: Annotated[list[Annotated[int, Field(strict=True, ge=0, lt=SEED_RANGE)]] | None,
                     Field(description="integers in [0, 2**64), each once")]
    adherence_resamples: COUNT
    fid_resamples: COUNT
    kid_subsets: COUNT
    kid_subset_size: COUNT
    device: text("auto, cpu, cuda or cuda:N", optional=False)


class ProbeArgs(Keys):  # python -m diffusion.evaluation.probe
    resolution: integer("an integer >= 16 (pixels)", ge=16)
    steps: integer("an integer >= 1", optional=True, ge=1)
    seed: SEED


def flag(path: list[str]) -> str:
    """An argparse destination as the user types it: num -> --num-images, batch_size -> --batch-size."""
    return {"num": "--num-images"}.get(path[0], "--" + path[0].replace("_", "-")) if path else "argument"


# -----------------------------------------------------------------------------------------------------------------
def validate(schema: type[Keys], values: dict, name=lambda path: ".".join(path)) -> Keys:
    """`values` checked against `schema`; the first wrong one as a `UserError` naming the key (`name` spells it from
    its path), the value and what is allowed."""
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        path, allowed = field_path(schema, first["loc"])
        if first["type"] == "missing" and len(path) == len(first["loc"]):
            raise UserError(f"{name(path)} is missing: use {allowed}") from None
        raise UserError(f"{name(path)}={short(lookup(values, path))}: use {allowed}") from None


def field_path(schema: type[BaseModel], loc: tuple) -> tuple[list[str], str]:
    """The key path an error's location names (pydantic adds union members and list indices to it) and its words."""
    path, model, allowed = [], schema, "a valid value"
    for part in loc:
        if not (isinstance(part, str) and isinstance(model, type) and issubclass(model, BaseModel)
                and part in model.model_fields):
            break
        field = model.model_fields[part]
        path.append(part)
        allowed = field.description or allowed
        inner = [a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type)] + [field.annotation]
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return path, allowed


def lookup(values: dict, path: list[str]):
    for part in path:
        values = values.get(part) if isinstance(values, dict) else None
    return values


def short(value) -> str:
    """A value as the user typed it, cut to one short line."""
    text_ = repr(value) if not (isinstance(value, float) and not math.isfinite(value)) else str(value)
    text_ = text_.replace("\n", "\\n")
    return text_ if len(text_) <= 60 else text_[:57] + "..."


def values_of(cfg, schema: type[Keys], literal: tuple[str, ...] = (), prefix: str = "") -> dict:
    """The values of `schema`'s keys in an OmegaConf config, as plain Python. Interpolations are resolved, except
    in the `literal` keys (prompts are text: `prompt='${oc.env:HOME}'` is those 15 characters). A key the config
    lacks is left out (the schema then says it is missing, or takes its default)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    values = {}
    for key, field in schema.model_fields.items():
        if cfg is None or key not in cfg:
            continue
        where = f"{prefix}{key}"
        nested = next((a for a in [field.annotation, *getattr(field.annotation, "__args__", ())]
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if where in literal:
            values[key] = OmegaConf.to_container(cfg, resolve=False)[key]
            continue
        try:
            node = cfg[key]
        except OmegaConfBaseException as error:
            raise UserError(f"{where}: cannot read its value ({str(error).splitlines()[0]})") from None
        if nested is not None and OmegaConf.is_dict(node):
            values[key] = values_of(node, nested, literal, f"{where}.")
        else:
            values[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return values


def write_back(cfg, keys: Keys, skip: tuple[str, ...] = ()) -> None:
    """Put the checked values into the config (`use_ema=no` becomes false), so the code after the boundary reads
    what was checked."""
    from omegaconf import open_dict

    with open_dict(cfg):
        for key in keys.model_fields_set & set(type(keys).model_fields):
            if key in skip or key not in cfg:
                continue
            value = getattr(keys, key)
            if isinstance(value, Keys):
                write_back(cfg[key], value, tuple(s.split(".", 1)[1] for s in skip if s.startswith(key + ".")))
            elif isinstance(value, (bool, int, float, str)) and not isinstance(cfg[key], type(value)):
                cfg[key] = value
