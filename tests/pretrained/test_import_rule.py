"""diffusion/pretrained reaches networks only through `_target_` configs: its files import torch, the standard
library's small pieces, `diffusion.errors` and each other, never `models` or the rest of `diffusion`."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "diffusion" / "pretrained"
ALLOWED = {"__future__", "dataclasses", "json", "pathlib", "torch", "safetensors", "diffusion.errors"}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def test_the_key_tables_import_no_network_and_no_other_part_of_diffusion():
    for path in sorted(PACKAGE.glob("*.py")):
        foreign = {name for name in imported(path)
                   if name.split(".")[0] not in ALLOWED and name not in ALLOWED
                   and not name.startswith("diffusion.pretrained.")}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"
