"""Guidance methods on toy-birds: prompt adherence and FID-by-probe of CFG, guidance interval, APG, CFG rescale and
autoguidance at two or three strengths, with 95% bootstrap intervals over the images, on one model, the same prompts
and seeds, the same sampler and steps (so every method but the interval makes two network passes a step; the table
counts them).

    python experiments/guidance/methods.py --ckpt <toy-birds last.ckpt> --guide-ckpt <a smaller / earlier one> \\
        --num 128 --scales 2 3
    python experiments/guidance/methods.py --ckpt ... --guide-ckpt short=<a.ckpt> small=<b.ckpt> --resume

Several guides (`name=path`) each give an autoguidance row ("auto (name)"); `--resume` keeps the settings an
earlier, interrupted run already wrote to methods_results.json and measures only the rest.

Each setting is `diffusion.evaluation.score.evaluate` (what `python -m diffusion.evaluation` runs): one image per
held-out caption (image i with seed i), adherence read back by the probe (bootstrap over images, 1000 resamples), FID
of probe features against --ref-num val renders (bootstrap, 200 resamples, recentred). Options of each method are
its conf/guidance/<method>.yaml defaults. Writes methods_results.json, methods_table.md and methods_tradeoff.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

METHODS = ("cfg", "auto", "apg", "interval", "rescale")  # the order they run in at each strength
OUT = Path(__file__).resolve().parent


class Counting:
    """A model that counts the images it denoises (rows of each batch): network evaluations per image."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x_t, t, cond):
        self.rows += x_t.shape[0]
        return self.model(x_t, t, cond)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--guide-ckpt", required=True, nargs="+",
                   help="autoguidance's guide, or several as name=path (one autoguidance row each)")
    p.add_argument("--resume", action="store_true", help="keep the settings already in methods_results.json")
    p.add_argument("--num", type=int, default=128, help="images per setting (one per caption)")
    p.add_argument("--ref-num", type=int, default=1000)
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    from diffusion.evaluation.features import make_extractor
    from diffusion.evaluation.probe import load_probe
    from diffusion.evaluation.score import evaluate
    from diffusion.loading import load_guide, load_model

    began = time.time()
    loaded = load_model(args.ckpt)
    guide_paths = dict(g.split("=", 1) if "=" in g else ("", g) for g in args.guide_ckpt)
    guides = {name: load_guide(path, loaded) for name, path in guide_paths.items()}
    resolution = int(loaded.payload["data"]["resolution"])
    probe = load_probe(resolution)
    extractor = make_extractor("probe", probe_resolution=resolution, device="cpu")
    options = {m: OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "guidance" / f"{m}.yaml")) for m in METHODS}
    # CFG and autoguidance at every strength first (the comparison a time-boxed run must reach), then the others
    settings = [("cfg", 1.0, "")] + sorted(((m, s, g) for s in args.scales for m in args.methods
                                           for g in (guides if m == "auto" else [""])),
                                          key=lambda setting: (setting[0] not in ("cfg", "auto"), setting[1]))
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume and (args.out / "methods_results.json").is_file():
        rows = json.loads((args.out / "methods_results.json").read_text())["rows"]
    for method, scale, guide_name in settings:
        name = "unguided (w = 1)" if scale == 1.0 else method + (f" ({guide_name})" if guide_name else "")
        if any(r["method"] == name and r["scale"] == scale for r in rows):
            continue
        guide = guides[guide_name] if method == "auto" else next(iter(guides.values()))
        counted, counted_guide = Counting(loaded.model), Counting(guide.model)
        result = evaluate(dataclasses.replace(loaded, model=counted), extractor, num=args.num, ref_num=args.ref_num,
                          guidance_scale=scale, guidance=options[method], batch_size=args.batch_size, probe=probe,
                          keep_images=0, progress=False,
                          guide=dataclasses.replace(guide, model=counted_guide) if method == "auto" else None)
        row = {"method": name, "scale": scale, "guide_step": int(guide.payload["step"]) if method == "auto" else None,
               "network_evaluations_per_image": counted.rows / args.num,
               "guide_evaluations_per_image": counted_guide.rows / args.num,
               **{k: result[k] for k in ("adherence_mean", "adherence_mean_interval", "adherence", "adherence_interval",
                                         "fid", "fid_interval", "kid", "fid_real_renders", "generation_seconds",
                                         "guide_ckpt", "steps", "sampler")}}
        rows.append(row)
        print(f"{row['method']} w={scale:g}: adherence {row['adherence_mean']:.3f} {row['adherence_mean_interval']}, "
              f"FID {row['fid']:.2f} {row['fid_interval']}, evals/image {row['network_evaluations_per_image']:.0f}"
              f"+{row['guide_evaluations_per_image']:.0f}, {time.time() - began:.0f}s", flush=True)
        write(args, loaded, guides, options, rows, began)  # after every setting: a time-boxed run keeps what it measured
    print(table(rows))


def write(args, loaded, guides, options, rows: list[dict], began: float) -> None:
    minutes = (time.time() - began) / 60
    result = {"command": "python " + " ".join(["experiments/guidance/methods.py", *sys.argv[1:]]),
              "minutes": round(minutes, 2), "ckpt": args.ckpt, "ckpt_step": int(loaded.payload["step"]),
              "guides": {name or "guide": {"ckpt": str(g.path), "step": int(g.payload["step"]),
                                          "parameters": sum(p.numel() for p in g.model.denoiser.parameters())}
                         for name, g in guides.items()}, "num": args.num,
              "ref_num": args.ref_num, "options": options, "rows": rows}
    (args.out / "methods_results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "methods_table.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "methods_tradeoff.png")


def table(rows: list[dict]) -> str:
    lines = ["| method | w | network evaluations / image (main + guide) | adherence [95%] | FID-by-probe [95%] |",
             "|---|---|---|---|---|"]
    for r in rows:
        low, high = r["adherence_mean_interval"]
        evaluations = f"{r['network_evaluations_per_image']:.0f}" + (
            f" + {r['guide_evaluations_per_image']:.0f}" if r["guide_evaluations_per_image"] else "")
        lines.append(f"| {r['method']} | {r['scale']:g} | {evaluations} | {100 * r['adherence_mean']:.1f}% "
                     f"[{100 * low:.1f}, {100 * high:.1f}] | {r['fid']:.1f} [{r['fid_interval'][0]:.1f}, "
                     f"{r['fid_interval'][1]:.1f}] |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    base = rows[0]
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        mine = [base] + [r for r in rows if r["method"] == method]
        if len(mine) == 1:
            continue
        xs = [100 * r["adherence_mean"] for r in mine]
        ys = [r["fid"] for r in mine]
        xerr = [[100 * (r["adherence_mean"] - r["adherence_mean_interval"][0]) for r in mine],
                [100 * (r["adherence_mean_interval"][1] - r["adherence_mean"]) for r in mine]]
        yerr = [[r["fid"] - r["fid_interval"][0] for r in mine], [r["fid_interval"][1] - r["fid"] for r in mine]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", ms=4, capsize=2, label=method, alpha=0.8)
        for r, x_, y_ in zip(mine, xs, ys):
            ax.annotate(f"{r['scale']:g}", (x_, y_), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="mean adherence (probe), %", ylabel="FID-by-probe (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("toy-birds: guidance methods (labels: w; bars: 95% bootstrap intervals)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
