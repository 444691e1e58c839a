"""Class names a user may type instead of a label: `sample.py ckpt=DiT-XL-2-256x256.pt prompt="golden retriever"`.

A 1000-class model is taken to be an ImageNet model (DiT), named by the ImageNet-1k list torchvision ships; a model
trained here on a labelled dataset (CIFAR-10, MNIST) keeps its dataset's names in its checkpoint."""

from __future__ import annotations

import difflib

from diffusion.errors import UserError

IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The ImageNet-1k class names in label order (0 'tench' ... 207 'golden retriever' ...), from torchvision."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def class_names_for(num_classes: int, stored: list[str] | None = None) -> list[str] | None:
    if stored:
        return list(stored)
    return imagenet_class_names() if num_classes == IMAGENET_CLASSES else None


def plain(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_index(name: str, names: list[str]) -> int:
    """The label of `name`, matched forgivingly (case, spaces, '-' and '_' ignored; a unique partial match
    accepted); a name that matches nothing is refused with the nearest names."""
    wanted, table = plain(name), [plain(n) for n in names]
    if wanted in table:
        return table.index(wanted)
    partial = [i for i, n in enumerate(table) if wanted in n.split(" ") or n in wanted.split(" ") or wanted in n]
    if len(partial) == 1:
        return partial[0]
    nearest = difflib.get_close_matches(wanted, table, n=5, cutoff=0.5)
    if len(partial) > 1:
        choices = ", ".join(repr(names[i]) for i in partial[:6])
        raise UserError(f"class name {name!r} matches several classes ({choices}); give one of them, or class_label=<index>")
    hint = f"nearest: {', '.join(repr(names[table.index(n)]) for n in nearest)}" if nearest else "give class_label=<index>"
    raise UserError(f"no class named {name!r} among the model's {len(names)} classes; {hint}")
