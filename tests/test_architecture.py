"""The architecture is checked, not hoped for: the import contracts in pyproject.toml ([tool.importlinter]) —
no import cycles in diffusion/ or models/, networks independent of the framework, the math free of networks,
training and data, training free of the sampling command layer — run with import-linter on every `make test`."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is not installed: run `make install` (it is a dev dependency)"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "an import contract is broken:\n" + result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_public_api_is_importable_without_the_heavy_modules():
    """`from diffusion import load_model` works, and `import diffusion` alone imports no submodule."""
    code = ("import sys, diffusion; assert not [m for m in sys.modules if m.startswith('diffusion.')], sorted(sys.modules); "
            "from diffusion import load_model, generate, generate_images, train, LoadedModel; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
