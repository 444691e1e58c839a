"""Several processes through torchrun (gloo on CPU): identical replicas, equal to one process with the same
global batch, and resuming at another process count."""

import json
import os
import subprocess
import sys

import torch

from diffusion import checkpoint as ckpt
from tiny import ROOT, TINY_TRAIN


def torchrun(processes: int, run_dir, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
               str(ROOT / "train.py"), *TINY_TRAIN, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=run_dir.parent, capture_output=True, text=True, timeout=300, env=env)


def single(run_dir, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, f"hydra.run.dir={run_dir}", *overrides],
                          cwd=run_dir.parent, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # lr 1e-4: Adam divides by sqrt(v), so where a gradient is tiny (zero-initialised output biases) the float32
    # difference in summation order (one mean of 8 vs the mean of two means of 4) moves a weight by up to ~0.03 lr
    steps = ["trainer.max_steps=3", "trainer.checkpoint_every=0", "optim.lr=1e-4"]
    two = torchrun(2, tmp_path / "two", "trainer.batch_size=4", *steps)
    assert two.returncode == 0, two.stderr[-3000:]
    one = single(tmp_path / "one", "trainer.batch_size=8", *steps)
    assert one.returncode == 0, one.stderr[-3000:]

    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["replica_max_difference"] == 0.0  # both ranks ended with identical weights
    a = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "last.ckpt")
    b = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["samples_seen"] == b["samples_seen"] == 24
    for key in ("model", "ema"):
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, atol=1e-5, rtol=0, msg=f"{key}.{name}")

    # and a run resumed with a different number of processes (same global batch) continues
    resumed = single(tmp_path / "resumed", "trainer.batch_size=8", "trainer.max_steps=5", "optim.lr=1e-4",
                     f"resume={tmp_path / 'two' / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert c["step"] == 5 and c["samples_seen"] == 40
