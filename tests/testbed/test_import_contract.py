"""diffusion.testbed imports, from this project, only diffusion.objectives, diffusion.errors and itself (no
training, pipeline, samplers, schedulers, networks or data), so it survives their redesign and stays light."""

import ast
from pathlib import Path

import diffusion.testbed

ALLOWED = ("diffusion.testbed", "diffusion.objectives", "diffusion.errors")


def test_testbed_imports_only_objectives_and_errors():
    for path in Path(diffusion.testbed.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in ("diffusion", "models"):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"
