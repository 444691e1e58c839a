"""Collect the two autoencoder runs (without / with the critic) into experiments/latent/: vae.json (PSNR curve,
steps, images seen, minutes) and reconstructions.png (the final grids side by side; in each, a row of held-out
originals above the row of their reconstructions).

    python experiments/latent/report.py outputs/latent/vae_no_critic outputs/latent/vae_critic
"""

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def summary(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    psnr = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    training = [r for r in records if "images_per_s" in r]
    last = training[-1]
    batch = next(line for line in (run / ".hydra" / "config.yaml").read_text().splitlines()
                 if line.strip().startswith("batch_size:"))
    batch_size = int(batch.split(":")[1].split("#")[0])
    return {"run": str(run), "final_psnr_db": psnr[-1][1], "best_psnr_db": max(p for _, p in psnr),
            "steps": last["step"], "images_seen": last["step"] * batch_size, "minutes": round(last["elapsed_s"] / 60, 1),
            "psnr_curve": psnr, "final_grid": str(sorted((run / "samples").glob("step_*.png"))[-1])}


def side_by_side(grids: list[Path], labels: list[str], path: Path) -> None:
    images = [Image.open(g).convert("RGB") for g in grids]
    strip, gap = 18, 8
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(i.height for i in images) + strip), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for image, label in zip(images, labels):
        draw.text((x + 4, 3), label, fill="black")
        canvas.paste(image, (x, strip))
        x += image.width + gap
    canvas.save(path)


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]] or [Path("outputs/latent/vae_no_critic"), Path("outputs/latent/vae_critic")]
    results = {run.name: summary(run) for run in runs}
    (HERE / "vae.json").write_text(json.dumps(results, indent=2) + "\n")
    labels = [f"{name}: {r['final_psnr_db']:.2f} dB, {r['steps']} steps, {r['minutes']} min" for name, r in results.items()]
    side_by_side([Path(r["final_grid"]) for r in results.values()], labels, HERE / "reconstructions.png")
    for label in labels:
        print(label)


if __name__ == "__main__":
    main()
