"""`make demo`: train the default model on the built-in toy-birds, then draw a few prompts with it.

Runs the two commands a user would type (printed first), in a run folder under outputs/demo/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "a red bird",
    "a small blue songbird with yellow wings perched on a branch, facing left, at sunset",
    "a large yellow duck on water, facing right, on a sunny day",
    "a white owl with black wings perched on a branch at night, facing right",
    "a green heron flying, facing left, in the day sky",
    "a purple bird with orange wings flying at sunset, facing right",
]


def run(command: list[str]) -> None:
    print("$ " + " ".join(f'"{c}"' if " " in c else c for c in command), flush=True)
    result = subprocess.run([sys.executable, *command], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main() -> None:
    run_dir = Path("outputs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    started = time.time()
    # a time budget so the whole demo takes under ten minutes on any machine: 2200 steps where they fit in 9 minutes,
    # else as many as fit, with the lr decay fitted to the 9 minutes so the model still ends annealed
    run(["train.py", f"hydra.run.dir={run_dir}", "trainer.max_minutes=9", "trainer.fit_schedule_to_time=true"])
    prompt_list = "[" + ",".join("'" + p.replace("'", "\\'") + "'" for p in PROMPTS) + "]"
    run(["sample.py", f"ckpt={run_dir}/checkpoints/last.ckpt", f"prompt={prompt_list}", "num_images=6",
         f"out_dir={run_dir}/demo_samples"])
    minutes = (time.time() - started) / 60
    print(f"\ndemo done in {minutes:.1f} min")
    print(f"  training samples (fixed prompts, EMA weights): {run_dir}/samples/")
    print(f"  your prompts, 6 images each (one row a prompt): {run_dir}/demo_samples/grid.png")
    print(f"  checkpoint: {run_dir}/checkpoints/last.ckpt")
    print(f'  more: python sample.py ckpt={run_dir}/checkpoints/last.ckpt prompt="a black duck on water at night"')


if __name__ == "__main__":
    main()
