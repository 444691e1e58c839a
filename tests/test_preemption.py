"""Preemption: SIGKILL at random moments while checkpoints are written never leaves a broken one in place;
SIGUSR1 (SLURM's warning) checkpoints and exits 0; old periodic checkpoints are pruned."""

import random
import signal
import time

from diffusion import checkpoint as ckpt
from diffusion.training import train
from tiny import signal_after_first_log, start_training, tiny_train_cfg, wait_for


def test_sigkill_while_saving_always_leaves_an_intact_checkpoint(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    steps_seen = []
    for attempt in range(4):
        # a checkpoint every step, so that a random kill often lands in the middle of a write
        process = start_training(run, "trainer.max_steps=100000", "trainer.checkpoint_every=1", "trainer.keep_last=2",
                                 "trainer.log_every=1", *(["resume=auto"] if attempt else []))
        wait_for(last, newer_than=last.stat().st_mtime if last.exists() else 0.0)  # this run has started saving
        time.sleep(rng.uniform(0.1, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        step = ckpt.load_checkpoint(last)["step"]  # raises if the kill left a broken file in its place
        steps_seen.append(step)
        for periodic in ckpt.list_checkpoints(run / "checkpoints"):
            ckpt.load_checkpoint(periodic)
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0], steps_seen  # each run resumed and went on
    resumed = train(tiny_train_cfg(run, "resume=auto", f"trainer.max_steps={steps_seen[-1] + 2}"))
    assert ckpt.load_checkpoint(resumed)["step"] == steps_seen[-1] + 2
    assert not list((run / "checkpoints").glob(".*.tmp"))  # temporaries of killed writers are cleaned at start


def test_sigusr1_checkpoints_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    returncode, err = signal_after_first_log(run, signal.SIGUSR1)
    assert returncode == 0, err
    assert "signal SIGUSR1" in err
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] >= 2


def test_keep_last_prunes_old_periodic_checkpoints(tmp_path):
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=7", "trainer.checkpoint_every=1", "trainer.keep_last=2"))
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_0000005.ckpt", "step_0000006.ckpt"]
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["step"] == 7
