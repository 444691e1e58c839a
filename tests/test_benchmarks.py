"""The benchmark runs end to end on a tiny setting and writes JSON (and a README) with the right fields.
Speed itself is never asserted here (DESIGN.md: measured in benchmarks/, not in timed tests)."""

import json

import pytest

pytest.importorskip("diffusers")

from benchmarks.setups import build_pair, check_same_architecture, check_same_function, make_inputs  # noqa: E402
from tiny import run_script  # noqa: E402


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_the_reference_has_our_architecture(name):
    """Same parameter count (asserted within 2% by the benchmark) and, for the text-conditional configs, the same
    shapes one for one (unet_base's attention holds q, k, v as one 1x1 convolution where diffusers has three
    Linear layers: the same parameters in another layout)."""
    architecture = check_same_architecture(build_pair(name))
    assert architecture["params_ours"] == architecture["params_reference"]
    assert architecture["same_parameter_shapes"] == (name != "base")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_reference_computes_our_function(name):
    """With our weights copied in, diffusers' network gives our outputs to float32 round-off: the benchmark
    compares two implementations of one function, not two different networks."""
    pair = build_pair(name)
    same = check_same_function(pair, make_inputs(pair, 2))
    assert same["max_output_difference"] < 1e-4 * max(1.0, same["max_output"]), same


@pytest.mark.slow  # 19 s; benchmarks/gpu.sh's tiny preset (default suite) runs the compared rows' code
def test_quick_benchmark_writes_results(tmp_path):
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    rows = "flops,train,sample,memory,ema,data,latent"
    result = run_script("benchmarks.run", "--quick", "--models", "tiny", "--repeats", "1", "--rows", rows,
                        "--device", "cpu", "--out", str(out), "--write-readme", "--readme", str(readme),
                        cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(out.glob("cpu-*-quick.json"))
    assert len(files) == 1, list(out.iterdir())
    results = json.loads(files[0].read_text())
    assert {"cpu_model", "cpu_cores", "torch", "diffusers", "command", "load_average_before", "load_average_after"} <= set(results["meta"])
    assert results["settings"]["quick"] and results["settings"]["device"] == "cpu"
    by_row = {row["row"]: row for row in results["rows"]}
    assert set(by_row) == {"flops", "train", "sample", "memory", "ema_update", "data", "latent_vs_pixel"}

    for name in ("flops", "train", "sample", "memory"):  # compared rows: ours, reference, and the oriented ratio
        row = by_row[name]
        assert row["model"] == "tiny" and row["ours"] > 0 and row["reference"] > 0, row
        higher_is_better = name in ("train", "sample")
        expected = row["ours"] / row["reference"] if higher_is_better else row["reference"] / row["ours"]
        assert row["ratio"] == pytest.approx(expected, rel=1e-3)
    assert by_row["train"]["params_ours"] == by_row["train"]["params_reference"]
    assert by_row["flops"]["max_output_difference"] < 1e-3
    assert len(by_row["train"]["seconds"]["ours"]) == 1 and len(by_row["train"]["seconds"]["reference"]) == 1
    assert 0 <= by_row["sample"]["sampler_overhead"]["ours"] < 1
    assert by_row["flops"]["train_to_forward"]["ours"] == pytest.approx(3.0, abs=0.5)  # backward ~ 2x forward
    assert "RSS" in by_row["memory"]["method"]
    assert by_row["ema_update"]["foreach"] > 0 and 0 < by_row["ema_update"]["share_of_train_step"] < 1
    assert by_row["data"]["workers_0"] > 0 and by_row["data"]["workers_1"] > 0
    assert by_row["latent_vs_pixel"]["latents"] > 0 and by_row["latent_vs_pixel"]["pixels"] > 0
    assert any("--device cuda" in item for item in results["todo"])  # the GPU rows are left to do, with the command

    text = readme.read_text()
    assert "| train | tiny | images/s |" in text and files[0].stem in text and "--device cuda" in text


def test_unknown_rows_are_refused(tmp_path):
    result = run_script("benchmarks.run", "--rows", "train,speed", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0 and "unknown rows ['speed']" in result.stderr


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_the_transformer_references_have_our_size(name):
    """DiT: the same count once diffusers' per-block copies of the time + class embedding are counted once;
    MMDiT: SD3's last block keeps one D x D (+ D) text-query projection more (its outputs are discarded)."""
    from benchmarks import transformers
    from benchmarks.settings import Settings

    nets = transformers.build_both(name, Settings())
    counts = transformers.parameter_counts(name, nets["ours"], nets["reference"])
    width = transformers.model_config(name).hidden_size
    assert counts["params_reference"] - counts["params_ours"] == (0 if name == "dit" else width * width + width)
    assert (counts["params_reference_total"] > counts["params_reference"]) == (name == "dit")


@pytest.mark.slow  # 16 s; the transformers themselves are tested in tests/models/
def test_quick_transformer_rows_write_their_own_results(tmp_path):
    out, readme = tmp_path / "results", tmp_path / "README.md"
    result = run_script("benchmarks.run", "--quick", "--rows", "mmdit", "--repeats", "1", "--device", "cpu",
                        "--out", str(out), "--write-readme", "--readme", str(readme), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(out.glob("cpu-*-transformers-quick.json"))  # a file of its own: the UNet results stay
    assert len(files) == 1, list(out.iterdir())
    rows = json.loads(files[0].read_text())["rows"]
    assert sorted((row["row"], row["model"]) for row in rows) == [(r, "mmdit") for r in ("flops", "memory", "sample", "train")]
    for row in rows:
        higher_is_better = row["row"] in ("train", "sample")
        expected = row["ours"] / row["reference"] if higher_is_better else row["reference"] / row["ours"]
        assert row["ours"] > 0 and row["ratio"] == pytest.approx(expected, rel=1e-3)
    assert "| train | mmdit | images/s |" in readme.read_text()


def test_the_gpu_command_runs_its_tiny_preset_here(tmp_path):
    """benchmarks/gpu.sh is the one command for a lent GPU; without CUDA it runs the tiny preset: every row
    (eager in both layouts, compiled, sampling, memory) through the same code as on a GPU."""
    import subprocess

    from tiny import ROOT

    done = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--preset", "tiny", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = tmp_path.glob("cpu-*-tiny.json")
    results = json.loads(path.read_text())
    assert results["meta"]["preset"] == "tiny" and results["meta"]["command"].startswith("benchmarks/gpu.sh")
    rows = {(row["row"], row.get("variant", {}).get("compile"), row.get("variant", {}).get("memory_format")): row
            for row in results["rows"]}
    expected = {("flops", None, None), ("train", False, "channels_last"), ("train", False, "contiguous"),
                ("sample", False, "channels_last"), ("memory", False, "channels_last"), ("train", True, "channels_last")}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["ours"] > 0 and row["reference"] > 0, key
    assert rows[("train", True, "channels_last")]["compile_seconds"]["ours"] > 0
    todo = " ".join(results["todo"])
    assert "MFU" in todo and "compile contiguous" in todo  # no bf16 peak for a CPU: said, not guessed


@pytest.mark.slow  # ~20 s: a narrowed network, one repeat
def test_the_published_model_benchmark_runs_and_draws_the_same_images(tmp_path):
    """benchmarks/published.py: DDIM sampling of the DDPM CIFAR-10 layout, ours beside diffusers' DDIMPipeline
    (the same images from the same noise), memory in fresh processes, load time."""
    from benchmarks.published import main

    results = main(["--device", "cpu", "--batch", "2", "--steps", "3", "--repeats", "1", "--narrow", "--out", str(tmp_path)])
    assert results["meta"]["max_image_difference"] <= 1e-4
    assert {row["row"] for row in results["rows"]} == {"sample", "memory", "load"}
    assert all(row["ours"] > 0 and row["reference"] > 0 for row in results["rows"])


@pytest.mark.slow  # ~45 CPU-s: the narrowed SD 1.5 UNet at 16x16 latents, one repeat, memory in fresh processes
def test_the_sd15_unet_benchmark_runs_on_the_same_weights(tmp_path):
    """benchmarks/sd15.py: our SD 1.5 UNet beside diffusers' UNet2DConditionModel on the same weights: the same eps
    and the same guided DDIM step, forward / step / memory rows."""
    from benchmarks.sd15 import main

    results = main(["--device", "cpu", "--latent", "16", "--repeats", "1", "--narrow", "--out", str(tmp_path)])
    assert results["meta"]["max_eps_difference"] <= 1e-4 and results["meta"]["max_step_difference"] <= 1e-4
    assert [row["row"] for row in results["rows"]] == ["forward", "guided DDIM step", "memory"]
    assert all(row["ours"] > 0 and row["reference"] > 0 for row in results["rows"])
