"""The bad-input matrix: every user-facing input of train.py, sample.py and the data commands, given a wrong
value, answers with one `error:` line that says what was wrong, exits non-zero, prints no traceback, and
overwrites nothing."""

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion import checkpoint as ckpt
from tiny import TINY_TRAIN, run_in_process, run_script


class Evil:
    """Unpickling this would run a shell command (if the loader allowed it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def stable_diffusion_files(root: Path, tiny_sd_files) -> dict:
    """Files cut from the tiny random SD 1.x pipeline (tests/conftest.py): other families, a missing text encoder."""
    from safetensors.torch import load_file, save_file

    _, folder, single = tiny_sd_files
    state = load_file(single)
    made = {"sdxl": {**state, "conditioner.embedders.0.x": torch.zeros(1)},
            "sd2": {"cond_stage_model.model.x": torch.zeros(1), **state},
            "flux": {"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)},
            "sd_no_text": {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}}
    for name, tensors in made.items():
        save_file(tensors, str(root / f"{name}.safetensors"))
    return {"sd_folder": folder, "sd_tokenizer": folder / "tokenizer",
            **{name: root / f"{name}.safetensors" for name in made}}


@pytest.fixture(scope="module")
def files(tmp_path_factory, two_step_checkpoint, tiny_sd_files):
    root = tmp_path_factory.mktemp("bad_input")
    good = two_step_checkpoint
    payload = ckpt.load_checkpoint(good)

    corrupt = root / "corrupt.ckpt"
    corrupt.write_bytes(good.read_bytes()[:1000])  # a checkpoint cut short
    other_version = root / "v999.ckpt"
    torch.save({**payload, "format_version": 999}, other_version)
    marker = root / "pwned"
    crafted_pickle = root / "crafted_pickle.ckpt"
    torch.save({"format_version": 1, "kind": "diffusion", "payload": Evil(marker)}, crafted_pickle)
    crafted_config = root / "crafted_config.ckpt"
    config = OmegaConf.create(payload["config"])
    config.model = {"_target_": "os.system", "command": f"touch {marker}"}
    torch.save({**payload, "config": OmegaConf.to_yaml(config)}, crafted_config)
    nan_weights = root / "nan_weights.ckpt"  # a run that diverged: every EMA weight NaN
    diverged = {**payload, "ema": {k: v * float("nan") if v.is_floating_point() else v for k, v in payload["ema"].items()}}
    torch.save({**diverged, "checksum": ckpt.checksums(diverged)}, nan_weights)  # saved so: its checksum holds
    text_as_png = root / "not_an_image.png"
    text_as_png.write_text("this is text, not a picture")
    from PIL import Image

    init_png, small_mask = root / "init.png", root / "mask_8px.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(init_png)
    Image.new("L", (8, 8), 255).save(small_mask)
    taken = root / "taken"
    taken.mkdir()
    (taken / "0000_seed0.png").write_bytes(b"an image the user keeps")
    return {**stable_diffusion_files(root, tiny_sd_files), "root": root, "good": good, "corrupt": corrupt, "v999": other_version, "pickle": crafted_pickle,
            "config": crafted_config, "marker": marker, "text_png": text_as_png, "taken": taken,
            "init_png": init_png, "small_mask": small_mask, "nan": nan_weights}


def cases(f):
    """(script, arguments, a fragment the error line must contain)."""
    out = f"out_dir={f['root'] / 'never'}"
    sample = ["sample.py", f"ckpt={f['good']}", "prompt=a red bird", "steps=2", out]
    train_tiny = ["train.py", *TINY_TRAIN, f"hydra.run.dir={f['root'] / 'train_runs'}"]
    return [
        # train.py
        (*train_tiny[:1], [*train_tiny[1:], "trainer.max_stepz=5"], "unknown config key 'trainer.max_stepz'"),
        (*train_tiny[:1], [*train_tiny[1:], "model=unet_huge"], "Could not find 'model/unet_huge'; available: ddpm_cifar10, dit_b2"),
        ("train.py", [*[o for o in train_tiny[1:] if not o.startswith(("model.", "text."))], "model=mmdit_tiny", "text=none"],
         "MMDiT is text-conditional by design: use text=scratch|minilm"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.max_steps=abc"], "trainer.max_steps='abc': use an integer >= 1"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.max_steps=0"], "trainer.max_steps=0: use an integer >= 1"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.batch_size=-1"], "trainer.batch_size=-1: use an integer >= 1"),
        (*train_tiny[:1], [*train_tiny[1:], "optim.lr=-1"], "optim.lr=-1: use a number > 0"),
        (*train_tiny[:1], [*train_tiny[1:], "optim.text_lr_scale=0"], "optim.text_lr_scale=0: use a number > 0"),
        (*train_tiny[:1], [*train_tiny[1:], "diffusion.caption_dropout=1.5"], "diffusion.caption_dropout=1.5: use a number in [0, 1)"),
        (*train_tiny[:1], [*train_tiny[1:], "objective.prediction_type=eps"], "unknown prediction type 'eps'"),
        (*train_tiny[:1], [*train_tiny[1:], "objective=flw"], "Could not find 'objective/flw'; available: ddpm, edm, flow"),
        (*train_tiny[:1], [*train_tiny[1:], "objective=flow", "objective.time_sampling=beta"],
         "unknown objective.time_sampling 'beta'"),
        (*train_tiny[:1], [*train_tiny[1:], "objective=flow", "objective.shift=0"], "objective.shift must be > 0"),
        (*train_tiny[:1], [*train_tiny[1:], "objective.loss_weighting=p2"], "unknown loss weighting 'p2'"),
        (*train_tiny[:1], [*train_tiny[1:], "diffusion.objective=flow"], "diffusion.objective is now the config group"),
        (*train_tiny[:1], [*train_tiny[1:], "diffusion.prediction_type=v"], "use objective.prediction_type=..."),
        (*train_tiny[:1], [*train_tiny[1:], "objective=flow", "sampler=ddim"], "sampler ddim does not fit this model's objective (flow)"),
        (*train_tiny[:1], [*train_tiny[1:], "schedule.name=cosin"], "unknown noise schedule 'cosin'"),
        (*train_tiny[:1], [*train_tiny[1:], "schedule.num_timesteps=1"], "num_timesteps must be at least 2"),
        (*train_tiny[:1], [*train_tiny[1:], "device=tpu"], "unknown device 'tpu'"),
        (*train_tiny[:1], [*train_tiny[1:], "task=gan"], "unknown task 'gan'"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.posthoc_ema.every=2", "trainer.posthoc_ema.sigma_rels=[0.5]"],
         "sigma_rel must be in (0, 0.2887)"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.posthoc_ema.every=-1"], "trainer.posthoc_ema.every=-1: use an integer >= 0"),
        (*train_tiny[:1], [*train_tiny[1:], "text.pooling=max"], "text: unknown text pooling 'max'"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.precision=fp8"], "trainer.precision='fp8': use one of auto, fp32, bf16"),
        (*train_tiny[:1], [*train_tiny[1:], "logger=wandb", "logger.mode=bogus"], "logger.mode='bogus': use one of offline, online, disabled"),
        (*train_tiny[:1], [*train_tiny[1:], "sampler.timestep_spacing=even"], "unknown timestep spacing 'even'"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset.resolution=8"], "resolution must be at least 16"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset.resolution=17"], "use a resolution divisible by 2"),
        (*train_tiny[:1], [*train_tiny[1:], "seed=abc"], "seed='abc': use an integer in [0, 2**64)"),
        (*train_tiny[:1], [*train_tiny[1:], f"seed={2**64}"], f"seed={2**64}: use an integer in [0, 2**64)"),
        (*train_tiny[:1], [*train_tiny[1:], "optim.betas=[0.9]"], "optim.betas=[0.9]: use two numbers in [0, 1)"),
        (*train_tiny[:1], [*train_tiny[1:], "optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0]: use two numbers in [0, 1)"),
        (*train_tiny[:1], [*train_tiny[1:], "optim.decay=step"], "optim.decay='step': use one of cosine, linear, constant"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.compile=maybe"], "trainer.compile='maybe': use true or false"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.ema_decay=1"], "trainer.ema_decay=1: use a number in [0, 1)"),
        (*train_tiny[:1], [*train_tiny[1:], "trainer.grad_clip=nan"], "trainer.grad_clip=nan: use a number >= 0"),
        (*train_tiny[:1], [*train_tiny[1:], "resume=true"], "checkpoint not found: true"),
        (*train_tiny[:1], [*train_tiny[1:], f"resume={f['root'] / 'missing.ckpt'}"], "checkpoint not found"),
        (*train_tiny[:1], [*train_tiny[1:], f"resume={f['corrupt']}"], "corrupt or not a checkpoint"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset=birds", f"paths.data_dir={f['root'] / 'nodata'}"], "python -m diffusion.data.download birds"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset=imagefolder"], "dataset.path"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset=imagefolder", f"dataset.path={f['root'] / 'nowhere'}"], "nowhere"),
        (*train_tiny[:1], [*train_tiny[1:], "dataset=cifar10", "dataset.download=false", f"paths.data_dir={f['root'] / 'nodata'}"], "cifar10"),
        # sample.py
        ("sample.py", ["prompt=a red bird"], "give a checkpoint"),
        ("sample.py", [f"ckpt={f['root'] / 'missing.ckpt'}", "prompt=x", out], "checkpoint not found"),
        ("sample.py", [f"ckpt={f['corrupt']}", "prompt=x", out], "corrupt or not a checkpoint"),
        ("sample.py", [f"ckpt={f['v999']}", "prompt=x", out], "format version 999"),
        ("sample.py", [f"ckpt={f['pickle']}", "prompt=x", out], "refusing to load"),
        ("sample.py", [f"ckpt={f['config']}", "prompt=x", out], "_target_ 'os.system'"),
        ("sample.py", [f"ckpt={f['text_png']}", "prompt=x", out], "corrupt or not a checkpoint"),
        ("sample.py", [*sample[1:], f"init_image={f['root'] / 'missing.png'}"], "init_image not found"),
        ("sample.py", [*sample[1:], f"init_image={f['text_png']}"], "is not a readable image"),
        ("sample.py", [*sample[1:], "strength=0"], "strength=0: use a number in (0, 1]"),
        ("sample.py", [*sample[1:], "strength=1.5"], "strength=1.5: use a number in (0, 1]"),
        ("sample.py", [*sample[1:-2], "steps=0", out], "steps=0: use an integer >= 1"),
        ("sample.py", [*sample[1:-2], "steps=5000", out], "steps must be an integer in [1, 1000]"),
        ("sample.py", [*sample[1:], "guidance_scale=-1"], "guidance_scale=-1: use a number in [0, 100]"),
        ("sample.py", [*sample[1:], "guidance_scale=abc"], "guidance_scale='abc': use a number in [0, 100]"),
        ("sample.py", [*sample[1:], "num_images=0"], "num_images=0: use an integer >= 1"),
        ("sample.py", [*sample[1:], "batch_size=0"], "batch_size=0: use an integer >= 1"),
        ("sample.py", [*sample[1:], "eta=-1"], "eta=-1: use a number in [0, 1]"),
        ("sample.py", [*sample[1:], "seed=-1"], "seed=-1: use an integer in [0, 2**64)"),
        ("sample.py", [*sample[1:], "seed=abc"], "seed='abc': use an integer in [0, 2**64)"),
        ("sample.py", [*sample[1:], f"seed={2**64}"], ": use an integer in [0, 2**64)"),
        ("sample.py", [*sample[1:], "use_ema=maybe"], "use_ema='maybe': use true or false"),
        ("sample.py", [*sample[1:], "strength=0.5"], "strength=0.5 applies to image-to-image"),
        ("sample.py", [*sample[1:-1], f"out_dir={f['text_png']}"], "is a file; give a folder"),
        ("sample.py", [*sample[1:], "steps=abc"], "steps='abc': use an integer >= 1"),
        ("sample.py", [f"ckpt={f['nan']}", *sample[2:]], "weight tensors hold NaN or inf"),
        ("sample.py", [*sample[1:], "device=cuda:7"], "no CUDA GPU"),
        ("sample.py", [*sample[1:], "colour=red"], "unknown config key 'colour'"),
        ("sample.py", [*sample[1:], "sampler=dpm"], "Could not find 'sampler/dpm'; available: ddim, ddpm, dpmpp_2m"),
        ("sample.py", [*sample[1:], "sampler=heun", "steps=1"], "steps must be an integer >= 2 for heun"),
        ("sample.py", [*sample[1:], "sampler=euler", "sampler.sigmas=kara"], "unknown euler sigma spacing (sampler.sigmas) 'kara'"),
        ("sample.py", [*sample[1:], "sampler=flow_euler"], "sampler flow_euler does not fit this model's objective (ddpm)"),
        ("sample.py", [*sample[1:], "sampler=dpmpp_2m", "eta=0.5"], "eta=0.5 applies to ddim only; dpmpp_2m has no eta"),
        ("sample.py", [*sample[1:], f"mask={f['small_mask']}"], "a mask needs the image it masks"),
        ("sample.py", [*sample[1:], f"init_image={f['init_png']}", f"mask={f['root'] / 'none.png'}"], "mask not found"),
        ("sample.py", [*sample[1:], f"init_image={f['init_png']}", f"mask={f['text_png']}"], "is not a readable image"),
        ("sample.py", [*sample[1:], f"init_image={f['init_png']}", f"mask={f['small_mask']}"],
         "give a mask of the init image's size"),
        ("sample.py", [*sample[1:], f"prompts_file={f['root'] / 'none.txt'}"], "prompts_file not found"),
        ("sample.py", [*sample[1:-1], f"out_dir={f['taken']}"], "already exists; choose another out_dir"),
        ("sample.py", [*sample[1:], "class_label=3"], "class_label=3 applies to class-conditional models"),
        ("sample.py", [*sample[1:], "class_label=-1"], "class_label=-1: use an integer >= 0"),
        ("sample.py", [*sample[1:], "num_images=2.5"], "num_images=2.5: use an integer >= 1"),
        ("sample.py", [*sample[1:], "cost.power_watts=-5"], "cost.power_watts=-5: use a number of watts > 0"),
        # the evaluation: every argument refused before a model loads or a probe trains
        *[("diffusion.evaluation", ["--ckpt", str(f["good"]), *arguments, "--cache-dir", str(f["root"] / "cache")], fragment)
          for arguments, fragment in [
              (["--steps", "-3"], "--steps=-3: use an integer >= 1"),
              (["--num-images", "1"], "--num-images=1: use an integer >= 2"),
              (["--seed", str(2**64)], f"--seed={2**64}: use an integer in [0, 2**64)"),
              (["--seeds", "1", "-2"], "--seeds=[1, -2]: use integers in [0, 2**64)"),
              (["--eta", "nan"], "--eta=nan: use a number in [0, 1]"),
              (["--guidance-scale", "inf"], "--guidance-scale=inf: use a number in [0, 100]"),
              (["--batch-size", "0"], "--batch-size=0: use an integer >= 1"),
              (["--fid-resamples", "0"], "--fid-resamples=0: use an integer >= 1"),
              (["--kid-subset-size", "-1"], "--kid-subset-size=-1: use an integer >= 1"),
              (["--sampler", "ddimm"], "unknown sampler 'ddimm'"),
              (["--steps", "5000"], "steps must be an integer in [1, 1000]"),
          ]],
        ("diffusion.evaluation.probe", ["--steps", "-5", "--cache-dir", str(f["root"] / "cache")], "--steps=-5: use an integer >= 1"),
        ("diffusion.evaluation.probe", ["--resolution", "8", "--cache-dir", str(f["root"] / "cache")], "--resolution=8: use an integer >= 16"),
        # sample.py on Stable Diffusion (the tiny random pipeline: its sizes are multiples of 4, SD 1.5's of 64)
        *(("sample.py", [f"ckpt={f[name]}", f"tokenizer={f['sd_tokenizer']}", "prompt=x", out], words) for name, words in (
            ("sdxl", "is a SDXL checkpoint"), ("sd2", "is a Stable Diffusion 2.x checkpoint"),
            ("flux", "is a Flux checkpoint"), ("sd_no_text", "holds no text encoder"))),
        ("sample.py", [f"ckpt={f['sd_folder']}", "prompt=x", "height=18", out], "height=18 is not a multiple of 4"),
        ("sample.py", [f"ckpt={f['good']}", f"tokenizer={f['sd_tokenizer']}", "prompt=x", out],
         "tokenizer= applies to Stable Diffusion checkpoints"),
        # data commands
        ("diffusion.data.toybirds", ["--out", str(f["root"] / "birds"), "--num", "0"], "num"),
        ("diffusion.data.toybirds", ["--out", str(f["root"] / "birds"), "--num", "4", "--resolution", "8"], "16"),
        ("diffusion.data.download", ["imagenet"], "imagenet"),
    ]


# a few rows also run as real processes: the in-process runner must see what a user's shell sees
AS_PROCESSES = ("unknown device 'tpu'",)


def test_every_bad_input_is_one_clear_line_and_nothing_is_overwritten(files):
    good_bytes = files["good"].read_bytes()
    matrix = cases(files)
    results = [(case, run_in_process(case[0], *case[1], cwd=files["root"])) for case in matrix]  # in turn: chdir

    def run(case):
        return case, run_script(case[0], *case[1], cwd=files["root"], timeout=180)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results += list(pool.map(run, [case for case in matrix if case[2] in AS_PROCESSES]))
    assert len(results) == len(matrix) + len(AS_PROCESSES)
    failures = []
    for (script, args, fragment), result in results:
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("training")]
        last = lines[-1] if lines else ""
        problems = []
        if result.returncode == 0:
            problems.append("exit status 0")
        if "Traceback" in result.stderr:
            problems.append("a traceback")
        if not last.startswith("error:") and not (script.startswith("diffusion.") and "error" in last.lower()):
            problems.append(f"last line {last!r}")
        if fragment not in last:
            problems.append(f"{fragment!r} not in {last!r}")
        if problems:
            failures.append(f"{script} {' '.join(args[-2:])}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)
    print(f"bad-input matrix: {len(matrix)} inputs tried")
    assert files["good"].read_bytes() == good_bytes
    assert (files["taken"] / "0000_seed0.png").read_bytes() == b"an image the user keeps"
    assert not (files["root"] / "never").exists() or not any((files["root"] / "never").glob("*.png"))
    assert not files["marker"].exists(), "a crafted checkpoint ran code"
    assert not (files["root"] / "cache").exists(), "a refused evaluation or probe wrote its cache"
