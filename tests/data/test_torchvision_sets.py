"""MNIST, Fashion-MNIST and CIFAR-10 from tiny files in torchvision's own on-disk formats."""

import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from diffusion.data.torchvision_sets import TorchvisionDataset
from diffusion.errors import UserError

try:
    from tests.data.fixtures import CIFAR_NAMES, make_cifar10, make_mnist
except ImportError:  # pytest run without the repository root on sys.path
    from fixtures import CIFAR_NAMES, make_cifar10, make_mnist

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


@pytest.fixture
def cifar_checksums_off(monkeypatch):
    """torchvision checks the published MD5 of every CIFAR batch; ours are home-made."""
    source = torchvision.datasets.CIFAR10
    monkeypatch.setattr(source, "train_list", [[name, None] for name, _ in source.train_list])
    monkeypatch.setattr(source, "test_list", [[name, None] for name, _ in source.test_list])
    monkeypatch.setattr(source, "meta", {**source.meta, "md5": None})


def test_mnist_items_are_padded_rgb_with_digit_captions(tmp_path):
    arrays = make_mnist(tmp_path)
    data = TorchvisionDataset("mnist", tmp_path, split="train", download=False)
    assert len(data) == 6 and data.num_classes == 10 and data.resolution == 32
    assert data.class_names[3] == "three"
    for index in range(len(data)):
        item = data[index]
        label = int(arrays["train"][1][index])
        assert item["label"] == label and item["image"].shape == (3, 32, 32)
        assert torch.equal(item["image"][0], item["image"][2])  # gray copied to 3 channels
        assert item["image"][:, :2].eq(-1).all() and item["image"][:, :, -2:].eq(-1).all()  # 2px border
        value = (10 + 20 * label) / 127.5 - 1
        assert item["image"][:, 2:30, 2:30].sub(value).abs().max() < 1e-5
        assert str(label) in item["text"] or data.class_names[label] in item["text"]
    assert "a handwritten digit 3" in set(data.all_captions())
    assert "the number three" in set(data.all_captions())
    val = TorchvisionDataset("mnist", tmp_path, split="val", download=False, resolution=16)
    assert len(val) == 4 and val[0]["image"].shape == (3, 16, 16)


def test_fashion_mnist_uses_its_own_folder_and_names(tmp_path):
    make_mnist(tmp_path, folder="FashionMNIST")
    data = TorchvisionDataset("fashion_mnist", tmp_path, split="train", download=False)
    assert data[1]["label"] == 1 and "pair of trousers" in data[1]["text"]
    assert "a photo of an ankle boot" in set(data.all_captions())


def test_cifar10_keeps_pixels_and_names(tmp_path, cifar_checksums_off):
    batches = make_cifar10(tmp_path)
    data = TorchvisionDataset("cifar10", tmp_path, split="train", download=False, random_flip=False)
    assert len(data) == 10
    pixels, labels = batches["data_batch_1"]
    item = data[0]
    expected = torch.tensor(pixels[0]).view(3, 32, 32).float() / 127.5 - 1
    assert item["label"] == labels[0] and torch.allclose(item["image"], expected)
    assert CIFAR_NAMES[labels[0]] in item["text"]
    assert data.class_names == CIFAR_NAMES
    small = TorchvisionDataset("cifar10", tmp_path, split="val", download=False, resolution=16)
    assert len(small) == 2 and small[0]["image"].shape == (3, 16, 16)
    assert small[0]["image"].min() >= -1 and small[0]["image"].max() <= 1


def test_missing_data_offline_is_one_user_error(tmp_path, monkeypatch):
    with pytest.raises(UserError) as error:
        TorchvisionDataset("mnist", tmp_path / "nothing", download=False)
    assert str(tmp_path / "nothing") in str(error.value) and "\n" not in str(error.value)

    class OfflineCIFAR10:
        """Stands in for torchvision's CIFAR10: no torchvision download code runs, so nothing can reach the network.
        With the files missing and a download asked for, it fails as torchvision does offline."""
        requested = []

        def __init__(self, root, train, download):
            self.requested.append(download)
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    monkeypatch.setattr(socket.socket, "connect", OfflineCIFAR10)  # belt and braces: any socket fails too
    with pytest.raises(UserError, match="network access"):
        TorchvisionDataset("cifar10", tmp_path / "nothing", download=True)  # reaches OfflineCIFAR10, not torchvision
    assert OfflineCIFAR10.requested == [True]


def test_unknown_name_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="mnist"):
        TorchvisionDataset("svhn", tmp_path)


def test_configs_build_through_the_project_allowlist(tmp_path, cifar_checksums_off):
    from omegaconf import OmegaConf

    from diffusion.config import build

    make_mnist(tmp_path / "mnist")
    make_mnist(tmp_path / "fashion_mnist", folder="FashionMNIST")
    make_cifar10(tmp_path / "cifar10")
    for name in ("mnist", "fashion_mnist", "cifar10"):
        config = OmegaConf.create({"paths": {"data_dir": str(tmp_path)},
                                   "dataset": OmegaConf.load(CONF / f"{name}.yaml")})
        data = build(config.dataset, where="dataset", split="val")
        assert isinstance(data, TorchvisionDataset) and data.name == name
        assert data[0]["image"].shape == (3, 32, 32) and data.random_flip == (name == "cifar10")
