"""Every config group option and experiment composes and instantiates at tiny size; the other datasets
run train.py -> sample.py end to end on data the tests make."""

from pathlib import Path

import pytest
import torch

from diffusion import checkpoint as ckpt
from diffusion.config import build_sampler, objective_for
from diffusion.model import build_diffusion_model
from diffusion.training.data import build_dataset, data_info
from fixtures import make_cifar10, make_cub, make_image_folder, make_mnist
from tiny import CONF, run_in_process, tiny_train_cfg

OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
           for group in ("dataset", "model", "text", "schedule", "sampler", "objective", "optim", "trainer", "logger", "vae",
                         "experiment")}


@pytest.fixture(autouse=True)
def cifar_checksums_off(monkeypatch):
    """torchvision checks CIFAR-10's published MD5s; the miniature the tests write cannot match them."""
    import torchvision

    source = torchvision.datasets.CIFAR10
    monkeypatch.setattr(source, "train_list", [[name, None] for name, _ in source.train_list])
    monkeypatch.setattr(source, "test_list", [[name, None] for name, _ in source.test_list])
    monkeypatch.setattr(source, "meta", {**source.meta, "md5": None})


def make_data(option: str, data_dir: Path) -> list[str]:
    """Overrides that point the dataset option at a miniature the test made."""
    if option == "birds":
        make_cub(data_dir)
        return []
    if option == "imagefolder":
        make_image_folder(data_dir / "folder")
        return [f"dataset.path={data_dir / 'folder'}"]
    if option in ("mnist", "fashion_mnist"):
        make_mnist(data_dir / option, folder="MNIST" if option == "mnist" else "FashionMNIST")
        return ["dataset.download=false"]
    if option == "cifar10":
        make_cifar10(data_dir / option)
        return ["dataset.download=false"]
    return []


@pytest.mark.parametrize("option", OPTIONS["dataset"])
def test_every_dataset_option_builds_a_dataset_that_follows_the_contract(option, tmp_path):
    extra = make_data(option, tmp_path / "data")
    cfg = tiny_train_cfg(tmp_path, f"dataset={option}", "dataset.resolution=16", *extra)
    dataset = build_dataset(cfg, "train")
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].min() >= -1 and item["image"].max() <= 1
    assert isinstance(item["text"], str) and isinstance(item["label"], int)
    assert data_info(dataset)["resolution"] == 16


@pytest.mark.parametrize("group", ["model", "text", "schedule", "sampler", "objective", "optim", "trainer", "logger", "vae",
                                   "experiment"])
def test_every_option_of_every_group_composes_and_builds(group, tmp_path):
    for option in OPTIONS[group]:
        extra = ["model.base_channels=8"] if group == "model" and option.startswith(("unet", "sd")) else []
        if group == "model" and option.startswith("dit") and option != "dit_tiny":  # class-conditional DiTs
            extra = ["text=none", "model.depth=1"]
        if group == "sampler" and option.startswith("flow_"):
            extra = ["objective=flow"]  # a flow sampler samples a flow model
        if group == "sampler" and option == "meanflow":
            extra = ["objective=meanflow"]  # the meanflow sampler samples a MeanFlow model
        if group == "sampler" and option == "consistency":  # what a consistency student stores (task=distill)
            extra = ["sampler.solver={name:ddim}", "sampler.grid_points=10", "sampler.sigma_data=0.01"]
        cfg = tiny_train_cfg(tmp_path, f"{group}={option}", *extra)
        sampler = build_sampler(cfg.sampler, objective_for(cfg))
        if group == "objective":  # each objective brings its own sampler (conf/objective/*.yaml)
            assert sampler.name == {"ddpm": "ddim", "flow": "flow_euler", "edm": "heun", "meanflow": "meanflow"}[option]
        if cfg.text.get("_target_") is None or group in ("model", "text"):
            shape = [3, 16, 16]
            model = build_diffusion_model(cfg, {"shape": shape}, ["<pad>", "<bos>", "<eos>", "<unk>", "bird"])
            with torch.no_grad():
                x = torch.randn(1, *shape)
                prompts = ["bird"] if model.is_text_conditional else None
                assert model(x, torch.tensor([10]), prompts=prompts).shape == x.shape, (group, option)


@pytest.mark.parametrize("option", ["imagefolder", "birds"])
def test_train_and_sample_on_real_image_files_from_the_command_line(option, tmp_path):
    extra = make_data(option, tmp_path / "data")
    run = tmp_path / "run"
    from tiny import TINY_TRAIN

    result = run_in_process("train.py", *TINY_TRAIN, f"dataset={option}", "dataset.resolution=16", "trainer.max_steps=2",
                        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == 2
    out = tmp_path / "samples"
    result = run_in_process("sample.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "prompt=a small bird", "num_images=2",
                        "steps=2", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.glob("*_seed*.png"))) == 2
