"""Tiny versions of the real configs, for tests that run the real code paths in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY_TRAIN = [
    "dataset.resolution=16",
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[1]", "model.head_dim=8",
    "text.width=16", "text.depth=1", "text.heads=2",
    "trainer.batch_size=4", "trainer.max_steps=4", "trainer.num_workers=0", "trainer.log_every=2",
    "trainer.sample_every=0", "trainer.sample_num=2", "trainer.checkpoint_every=2", "trainer.channels_last=false",
    "sampler.steps=2", "optim.warmup_steps=2", "device=cpu",
]


def tiny_train_cfg(output_dir: Path, *overrides: str, config_name: str = "train"):
    """The real `train` config, shrunk, writing to `output_dir`."""
    tiny = TINY_TRAIN
    if any(o.startswith("text=") and o != "text=scratch" for o in overrides):  # only the scratch encoder has a width
        tiny = [o for o in TINY_TRAIN if not o.startswith("text.")]
    if any(o.startswith(("model=dit", "model=mmdit")) for o in overrides):  # a transformer: shrink its own keys instead
        tiny = [o for o in tiny if not o.startswith("model.")] + ["model.hidden_size=32", "model.depth=2", "model.num_heads=2"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name,
                       overrides=[*tiny, f"paths.output_dir={output_dir}", "paths.data_dir=" + str(output_dir / "data"),
                                  *overrides])


def run_script(script: str, *args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run train.py / sample.py / python -m ... as a user would, in `cwd`."""
    command = [sys.executable, str(ROOT / script), *args] if script.endswith(".py") else [sys.executable, "-m", script, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def run_in_process(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same command as `run_script`, run in this process (its argv, working directory, stdout and stderr),
    for tables of bad inputs that fail before any work: it saves the interpreter's start-up and the imports
    (~1.5 CPU-seconds a command) and keeps every line the command prints. Not thread-safe (it changes the
    working directory); exceptions that escape the command's own handling come back as exit status 1 with
    their traceback in stderr, as they would from a process."""
    import contextlib
    import io
    import runpy
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    argv, directory = sys.argv, os.getcwd()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [str(ROOT / script) if script.endswith(".py") else script, *args]
        GlobalHydra.instance().clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy's note that `python -m diffusion.x` ran a module this process had imported already
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            try:
                if script.endswith(".py"):
                    runpy.run_path(str(ROOT / script), run_name="__main__")
                else:
                    runpy.run_module(script, run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if not isinstance(exit_.code, (int, type(None))):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 (a command's uncaught error: its traceback, exit status 1)
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(directory)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def start_training(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """`python train.py` (tiny) as a separate process writing to `run_dir`; its stderr is piped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, f"hydra.run.dir={run_dir}", *overrides],
                            cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, timeout: float = 120, newer_than: float = 0.0) -> None:
    """Until `path` exists and was written after `newer_than` (a modification time)."""
    import time

    deadline = time.time() + timeout
    while not (path.exists() and path.stat().st_mtime > newer_than) and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists() and path.stat().st_mtime > newer_than, f"{path} was not written"


def signal_after_first_log(run_dir: Path, signum: int, *overrides: str) -> tuple[int, str]:
    """Start a long tiny training run, send `signum` once it has logged, and return (exit status, stderr)."""
    process = start_training(run_dir, "trainer.max_steps=100000", "trainer.checkpoint_every=0", *overrides)
    wait_for(run_dir / "metrics.jsonl")
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    return process.returncode, err

