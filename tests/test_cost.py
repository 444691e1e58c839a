"""What a run costs: FLOP counts against hand counts, the energy meters, and the totals a run and a PNG carry."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.evaluation.cost import main as cost_cli
from diffusion.cost import EnergyMeter, FlopTally, RunCost, count_flops, rapl_counter
from diffusion import checkpoint as ckpt
from diffusion.training import train
from models.layers import FusedAttention as Attention
from tiny import tiny_train_cfg


def test_a_convolution_costs_two_flops_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    # every output value (B Cout H W of them) is a sum of Cin k k products; the bias add is not counted
    assert count_flops(lambda: conv(x))[0] == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)


def test_an_attention_layer_by_hand_forward_and_backward():
    batch, length, dim, heads = 2, 64, 32, 4
    layer = Attention(dim, heads)
    h = torch.randn(batch, length, dim, requires_grad=True)
    projections = 2 * batch * length * dim * (dim + 2 * dim + dim)  # q, kv, output: B L D (D + 2D + D) multiply-adds
    scores_and_mix = 2 * 2 * batch * length * length * dim  # Q K^T and softmax(.) V: B h L L (D/h) each, over h heads
    forward, _ = count_flops(lambda: layer(h))
    assert forward == projections + scores_and_mix
    # backward: two matmuls per linear matmul (grad of input and of weight), five for attention's two
    trained, _ = count_flops(lambda: layer(h).sum().backward())
    assert trained == forward + 2 * projections + 2.5 * scores_and_mix


def test_the_tally_counts_the_first_call_and_multiplies():
    linear = nn.Linear(4, 5, bias=False)
    tally = FlopTally()
    counted = tally.wrap("net", linear)
    x = torch.randn(3, 4)
    outputs = [counted(x) for _ in range(7)]
    assert torch.equal(outputs[0], linear(x))  # counting changes nothing
    assert tally.calls == {"net": 7} and tally.total == 7 * 2 * 3 * 4 * 5


def fake_rapl(root, values, ranges):
    for i, (value, top) in enumerate(zip(values, ranges)):
        domain = root / f"intel-rapl:{i}"
        domain.mkdir(parents=True, exist_ok=True)
        (domain / "energy_uj").write_text(f"{value}\n")
        (domain / "max_energy_range_uj").write_text(f"{top}\n")
    sub = root / "intel-rapl:0:0"  # a core sub-domain inside package 0: not added twice
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    (sub / "max_energy_range_uj").write_text("100\n")


def test_rapl_sums_the_packages_and_survives_a_counter_wrap(tmp_path):
    fake_rapl(tmp_path, [1_000_000, 500], [10_000_000, 10_000_000])
    read, source = rapl_counter(tmp_path)
    assert source == "measured (RAPL)" and read() == 0.0
    fake_rapl(tmp_path, [3_000_000, 1_500], [10_000_000, 10_000_000])
    assert read() == pytest.approx(2.001)
    fake_rapl(tmp_path, [999_999, 2_500], [10_000_000, 10_000_000])  # package 0 wrapped past its range
    assert read() == pytest.approx(2.001 + (10_000_001 - 3_000_000 + 999_999) / 1e6 + 0.001)


def test_no_readable_counter_means_an_estimate_and_says_so(tmp_path):
    assert rapl_counter(tmp_path / "absent") == (None, None)
    meter = EnergyMeter("cpu", power_watts=50)
    time.sleep(0.2)
    joules, seconds = meter.joules(), meter.seconds()
    assert not meter.measured and meter.source.startswith("estimated (50 W")
    assert joules == pytest.approx(50 * seconds, rel=0.05) and joules >= 50 * 0.2


def test_a_run_records_its_cost_in_metrics_checkpoint_and_closing_line(tmp_path, capsys):
    first = train(tiny_train_cfg(tmp_path / "a", "trainer.max_steps=2", "cost.power_watts=40"))
    payload = ckpt.load_checkpoint(first)
    cost = payload["cost"]
    assert cost["images_seen"] == 2 * 4 and cost["train_flops"] == cost["train_flops_per_image"] * 8
    assert cost["train_flops_per_image"] > 0 and cost["energy_source"].startswith("estimated (40 W")
    assert cost["energy_j"] == pytest.approx(40 * cost["device_seconds"], rel=0.05)
    assert "cost: " in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in records] == [8] and records[-1]["train_flops"] == cost["train_flops"]

    resumed = ckpt.load_checkpoint(train(tiny_train_cfg(tmp_path / "b", "trainer.max_steps=4", f"resume={first}",
                                                        "cost.power_watts=40")))["cost"]
    assert resumed["images_seen"] == 16 and resumed["train_flops"] == 2 * cost["train_flops"]
    assert resumed["device_seconds"] > cost["device_seconds"] and resumed["energy_j"] > cost["energy_j"]

    # the comparison: one row per run, from the checkpoints' cost and (for b) an evaluation.json beside it
    evaluation = {"fid": 123.4, "extractor": "probe", "adherence": {"colour": 0.5, "facing": 1.0}, "num_images": 8,
                  "cost_per_image": {"flops": 2.5e9, "seconds": 0.1, "energy_j": 3.0, "energy_source": "measured (RAPL)"}}
    (tmp_path / "b" / "eval").mkdir()
    (tmp_path / "b" / "eval" / "evaluation.json").write_text(json.dumps(evaluation))
    chart = tmp_path / "cost.png"
    cost_cli([str(tmp_path / "a"), str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "--chart", str(chart),
              "--json", str(tmp_path / "cost.json")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert len(rows) == 2 and "| 8 |" in rows[0] and "| 16 |" in rows[1] and rows[0].endswith("| — | — | — | — |")
    assert "2.5 GFLOP | 3 J measured | 75.0% | 123.4 |" in rows[1]
    assert chart.stat().st_size > 10_000 and json.loads((tmp_path / "cost.json").read_text())[1]["cost"] == resumed
    with pytest.raises(SystemExit) as stopped:
        cost_cli([str(tmp_path / "nothing here")])
    assert stopped.value.code == 2 and "neither a checkpoint nor a run directory" in capsys.readouterr().err


def test_training_flops_are_about_three_forwards(tmp_path):
    """Backward costs about twice the forward (gradients of inputs and of weights): the counted training
    step of a UNet without a text encoder lands near 3x one forward pass."""
    from diffusion.config import objective_for
    from diffusion.model import build_diffusion_model
    from diffusion.training.loop import training_flops_per_image

    cfg = tiny_train_cfg(tmp_path, "text=none")
    info = {"shape": [3, 16, 16], "resolution": 16, "channels": 3, "num_classes": None}
    model = build_diffusion_model(cfg, info, None)
    objective = objective_for(cfg)
    dataset = [{"text": "", "label": 0}]
    train_flops = training_flops_per_image(model, objective, cfg, dataset, info, torch.device("cpu"),
                                           torch.contiguous_format)
    x = torch.zeros(2, 3, 16, 16)
    forward, _ = count_flops(lambda: model.denoiser(x, torch.zeros(2), None))
    assert 2.5 < train_flops / (forward / 2) < 3.2
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients behind


def test_the_closing_line_reads_like_a_sentence():
    line = RunCost.line({"train_flops": 1.5e15, "train_flops_per_image": 3e9, "images_seen": 500_000,
                         "device_seconds": 3600.0, "energy_j": 7.2e6, "energy_source": "measured (NVML)",
                         "devices": 1, "device": "NVIDIA H100"})
    assert line == ("cost: 1.5 PFLOP training compute (3 GFLOP per image x 500,000 images seen), 3,600 device-seconds "
                    "on 1 x NVIDIA H100, 7.2 MJ (2 kWh) measured (NVML)")


def test_mse_is_not_counted_as_model_flops():
    a = torch.randn(8, 8)
    assert count_flops(lambda: F.mse_loss(a, a))[0] == 0


def test_the_final_loss_is_the_last_full_log_window(tmp_path):
    from diffusion.evaluation.cost import final_loss

    lines = [{"step": 50, "loss": 0.3}, {"step": 100, "loss": 0.2}, {"step": 150, "loss": 0.1}, {"step": 160, "loss": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{\"step\": 1")
    assert final_loss(tmp_path) == 0.1  # the 10-step closing window and the cut-off line are passed over
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 0.5}) + "\n")
    assert final_loss(tmp_path) == 0.5  # a run shorter than one window: its only line
    assert final_loss(tmp_path / "missing") is None


def test_the_cost_table_writes_beside_the_runs_and_never_over_a_file(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """No --chart: cost.png goes into the runs' folder, not the working directory; an existing chart or JSON file is
    refused in one line unless --overwrite."""
    run = tiny_checkpoint.parent.parent
    monkeypatch.chdir(tmp_path)
    chart = run / "cost.png"
    chart.unlink(missing_ok=True)
    cost_cli([str(run)])
    assert chart.is_file() and not (tmp_path / "cost.png").exists()
    kept = tmp_path / "kept.json"
    kept.write_text("the user's file")
    for argv in ([str(run)], [str(run), "--chart", str(tmp_path / "new.png"), "--json", str(kept)]):
        with pytest.raises(SystemExit) as stopped:
            cost_cli(argv)
        assert stopped.value.code == 2 and "already exists; add --overwrite" in capsys.readouterr().err
    assert kept.read_text() == "the user's file" and not (tmp_path / "new.png").exists()
    cost_cli([str(run), "--json", str(kept), "--overwrite"])
    assert kept.read_text().startswith("[")
    chart.unlink()
