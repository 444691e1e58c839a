"""Latent vs pixel diffusion training speed at 64x64 on toy-birds: the same UNet config (unet_tiny), the
same batch, ~100 steps each, run one after the other with train.py as a user would.

    OMP_NUM_THREADS=1 nice -n 10 python experiments/latent/speed.py --vae <kl_f4 checkpoint> [--steps 100]

images/s is the loop's own figure (metrics.jsonl), the median over log intervals after the first (which
holds the warm-up); the latent run's one-off encoding of the latent cache happens before its loop starts
and is reported separately. Writes experiments/latent/speed.json.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(name: str, overrides: list[str], out: Path, steps: int, batch: int) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl is appended to: start clean
    command = [sys.executable, str(ROOT / "train.py"), "dataset.resolution=64", "model=unet_tiny",
               f"trainer.max_steps={steps}", f"trainer.batch_size={batch}", "trainer.log_every=10",
               "trainer.sample_every=0", "trainer.sample_num=1", "trainer.checkpoint_every=0", "device=cpu",
               f"hydra.run.dir={run_dir}", *overrides]
    print(" ".join(command[1:]), flush=True)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.time() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]
    return {"images_per_s": round(statistics.median(rates), 2), "intervals": [round(r, 2) for r in rates],
            "wall_s": round(wall, 1), "command": " ".join(["python train.py", *command[2:]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", required=True, help="a kl_f4 autoencoder checkpoint (task=vae)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "latent_speed")
    args = parser.parse_args()
    results = {
        "pixel": run("pixel", [], args.out, args.steps, args.batch),
        # 2000 cached images instead of 10000: the cache size does not change images/s, only the one-off encoding
        "latent": run("latent", ["experiment=ldm_toybirds", f"vae.ckpt={Path(args.vae).resolve()}", "vae.cache_images=2000",
                                 f"vae.cache_dir={args.out / 'cache'}"], args.out,
                      args.steps, args.batch),
    }
    results["speedup"] = round(results["latent"]["images_per_s"] / results["pixel"]["images_per_s"], 2)
    (ROOT / "experiments" / "latent" / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: (v["images_per_s"] if isinstance(v, dict) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
