"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, with class names as captions.

``dataset=mnist | fashion_mnist | cifar10``, all built by one class, `TorchvisionDataset`, whose
``name`` picks a row of `SPECS`. Files live where torchvision puts them under
``root`` (default ``${paths.data_dir}/<name>``): ``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``
(the idx ubyte files) and ``<root>/cifar-10-batches-py/`` (the python pickle batches). With
``download=true`` torchvision fetches them when missing; offline, place them there yourself.

Images become 3-channel RGB at ``resolution`` (default 32 for all three): the 28x28 MNIST-style
digits are padded by 2 black pixels to 32x32 (the LeNet convention, so strokes never touch the
border) and then resized (bicubic, antialiased) when ``resolution`` is not 32; CIFAR's 32x32
images are resized likewise. Labels are the class indices 0..9; split "val" is the test set.
Captions come from a few templates per class ("a photo of a frog", "the number three"), one
drawn at random per access.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import Dataset

from diffusion.data import images
from diffusion.data.birds import with_article
from diffusion.errors import UserError, check_choice

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Spec:
    """What differs between the three sets: where torchvision looks, class names, caption templates."""

    source: str                  # the torchvision.datasets class name
    files_hint: str              # where under root torchvision expects the files
    class_names: tuple           # plain names used in captions
    templates: tuple             # caption templates with {name}, {article_name}, {digit}
    random_flip: bool            # default: off for digits and clothes, whose mirror images differ


SPECS = {
    "mnist": Spec(
        "MNIST", "MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...)",
        DIGIT_WORDS,
        ("a handwritten digit {digit}", "the number {name}", "a handwritten {name}", "the digit {digit}"),
        random_flip=False),
    "fashion_mnist": Spec(
        "FashionMNIST", "FashionMNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...)",
        ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot"),
        ("a photo of {article_name}", "a black and white photo of {article_name}", "{article_name}",
         "a product photo of {article_name}"),
        random_flip=False),
    "cifar10": Spec(
        "CIFAR10", "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("a photo of {article_name}", "a blurry photo of {article_name}", "a small photo of {article_name}",
         "{article_name}"),
        random_flip=True),
}


class TorchvisionDataset(Dataset):
    """MNIST / Fashion-MNIST / CIFAR-10: ``{"image": [3, R, R] in [-1, 1], "text", "label"}``."""

    def __init__(
        self,
        name: str,                  # mnist | fashion_mnist | cifar10
        root,                       # torchvision's root folder
        split: str = "train",       # train | val (= the test set)
        resolution: int = 32,       # output side in pixels
        download: bool = True,      # fetch with torchvision when the files are missing
        random_flip: bool | None = None,  # None: the set's default (only CIFAR-10 flips)
    ):
        check_choice("torchvision dataset", name, tuple(SPECS))
        check_choice("split", split, ("train", "val", "test"))
        if int(resolution) < 8:
            raise UserError(f"resolution must be at least 8 pixels, got {resolution}")
        self.spec = SPECS[name]
        self.name = name
        self.root = str(root)
        self.split = split
        self.resolution = int(resolution)
        self.random_flip = self.spec.random_flip if random_flip is None else bool(random_flip)
        self.class_names = list(self.spec.class_names)
        self.num_classes = len(self.class_names)
        data, targets = self._load(train=split == "train", download=bool(download))
        self.images = _as_nchw_uint8(data)  # uint8 [N, C, H, W], C = 1 or 3
        self.labels = torch.as_tensor(targets, dtype=torch.long)
        self.captions = [[self._fill(template, c) for template in self.spec.templates]
                         for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        label = int(self.labels[index])
        image = self._to_resolution(self.images[index])
        image = images.maybe_flip(image, self.random_flip)
        captions = self.captions[label]
        text = captions[int(torch.randint(len(captions), ()))]
        return {"image": image, "text": text, "label": label}

    def all_captions(self):
        for captions in self.captions:
            yield from captions

    def _load(self, train: bool, download: bool):
        source = getattr(torchvision.datasets, self.spec.source)
        try:
            dataset = source(self.root, train=train, download=download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError... all mean "no data"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            action = ("run once with network access" if download
                      else "set dataset.download=true with network access")
            raise UserError(f"{self.spec.source} not found in {self.root} and not downloaded ({reason}); "
                            f"{action}, or place the files in {self.root}/{self.spec.files_hint}") from None
        return dataset.data, dataset.targets

    def _to_resolution(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [C, H, W] -> float [3, R, R] in [-1, 1]."""
        x = image.float().unsqueeze(0) / 127.5 - 1.0  # (1, C, H, W)
        if x.shape[-1] == 28:
            x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # black border, 28 -> 32
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic",
                              antialias=True, align_corners=False).clamp(-1.0, 1.0)
        return x[0].expand(3, -1, -1).contiguous()

    def _fill(self, template: str, label: int) -> str:
        name = self.class_names[label]
        return template.format(name=name, article_name=with_article(name), digit=label)


def _as_nchw_uint8(data) -> torch.Tensor:
    """MNIST's uint8 tensor [N, 28, 28] or CIFAR's numpy [N, 32, 32, 3] -> uint8 [N, C, H, W]."""
    data = torch.as_tensor(data, dtype=torch.uint8)
    if data.ndim == 3:
        return data.unsqueeze(1)
    return data.permute(0, 3, 1, 2).contiguous()
