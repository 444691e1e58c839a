"""Every notebook runs headless, top to bottom, on tiny settings (nbclient + the `python3` kernel).

Notebooks 02-04 get the shared tiny checkpoint through CKPT (their own training path is the same
`model_for_notebook` call); 05 trains its own tiny model on 4 images, so the training path runs too;
06 opens the tiny random Stable Diffusion pipeline the SD tests build (SD_CKPT).
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the dev extra (nbformat, nbclient, ipykernel)")
NotebookClient = pytest.importorskip("nbclient", reason="the notebook tests need the dev extra").NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_six_notebooks_committed_without_outputs():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch, request):
    monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path / "figures"))
    # the kernel imports this checkout's package (not another tree the environment was installed from)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("NOTEBOOK_TRAIN_STEPS", "30")
    monkeypatch.setenv("NOTEBOOK_REFERENCE_STEPS", "20")
    monkeypatch.setenv("NOTEBOOK_RESOLUTION", "16")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CKPT", raising=False)
    if path.stem.startswith("06"):  # its own model: the tiny SD pipeline (built once, shared with tests/pretrained)
        monkeypatch.setenv("SD_CKPT", str(request.getfixturevalue("tiny_sd_files")[1]))
    else:  # a quick 16 px probe: the probe branches run
        monkeypatch.setenv("DIFFUSION_CACHE", str(request.getfixturevalue("quick_probe_cache")))
    if not path.stem.startswith(("05", "06")):
        monkeypatch.setenv("CKPT", str(request.getfixturevalue("tiny_checkpoint")))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures = list((tmp_path / "figures").rglob("*.png"))
    assert figures, "the notebook wrote no figure"
