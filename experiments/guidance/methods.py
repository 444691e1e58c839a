"""Guidance methods on toy-birds: prompt adherence and FID-by-probe of CFG, guidance interval, APG, CFG rescale and
autoguidance at two or three strengths, with 95% bootstrap intervals over the images, on one model, the same prompts
and seeds, the same sampler and steps (so every method but the interval makes two network passes a step; the table
counts them).

    python experiments/guidance/methods.py --ckpt <toy-birds last.ckpt> --guide-ckpt <a smaller / earlier one> \\
        --num 128 --scales 2 3
    python experiments/guidance/methods.py --ckpt ... --guide-ckpt short=<a.ckpt> small=<b.ckpt> --resume

Several guides (`name=path`) each give an autoguidance row ("auto (name)"); `--resume` keeps the settings an
earlier, interrupted run already wrote to methods_results.json and measures only the rest.

Every setting keeps its images' probe features and attribute hits (<out>/per_image/), and each row is compared with
classifier-free guidance paired image by image (the same prompts and starting noises; a bootstrap that resamples the
same images for both, so the spread they share cancels): with CFG at the same w, and with the CFG row (or the unguided
one) nearest in mean adherence, the comparison EDM2's claim is about (better FID at equal adherence).

Each setting is `diffusion.evaluation.score.evaluate` (what `python -m diffusion.evaluation` runs): one image per
held-out caption (image i with seed i), adherence read back by the probe (bootstrap over images, 1000 resamples), FID
of probe features against --ref-num val renders (bootstrap, 200 resamples, recentred). Options of each method are
its conf/guidance/<method>.yaml defaults. Writes methods_results.json, methods_table.md and methods_tradeoff.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
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
    from diffusion.evaluation.score import evaluate, toybirds_reference
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
                          keep_images=0, progress=False, keep_per_image=True,
                          guide=dataclasses.replace(guide, model=counted_guide) if method == "auto" else None)
        row = {"method": name, "scale": scale, "guide_step": int(guide.payload["step"]) if method == "auto" else None,
               "network_evaluations_per_image": counted.rows / args.num,
               "guide_evaluations_per_image": counted_guide.rows / args.num,
               **{k: result[k] for k in ("adherence_mean", "adherence_mean_interval", "adherence", "adherence_interval",
                                         "fid", "fid_interval", "kid", "fid_real_renders", "generation_seconds",
                                         "guide_ckpt", "steps", "sampler")}}
        per_image = args.out / "per_image" / f"{slug(name, scale)}.npz"
        per_image.parent.mkdir(exist_ok=True)
        np.savez(per_image, features=result["per_image"]["features"], hits=result["per_image"]["hits"])
        row["per_image"] = str(per_image.relative_to(args.out))
        rows.append(row)
        print(f"{row['method']} w={scale:g}: adherence {row['adherence_mean']:.3f} {row['adherence_mean_interval']}, "
              f"FID {row['fid']:.2f} {row['fid_interval']}, evals/image {row['network_evaluations_per_image']:.0f}"
              f"+{row['guide_evaluations_per_image']:.0f}, {time.time() - began:.0f}s", flush=True)
        write(args, loaded, guides, options, rows, began)  # after every setting: a time-boxed run keeps what it measured
    reference = toybirds_reference(extractor, resolution, args.ref_num)
    compare_with_cfg(rows, args.out, reference)
    write(args, loaded, guides, options, rows, began)
    print(table(rows))


def slug(name: str, scale: float) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") + f"_w{scale:g}"


def compare_with_cfg(rows: list[dict], out: Path, reference: dict) -> None:
    """Each non-CFG row against CFG, paired image by image: at the same w ("vs_cfg_same_w") and against the CFG or
    unguided row nearest in mean adherence ("vs_cfg_nearest"), as [difference, low, high] of mean adherence and FID."""
    from diffusion.evaluation.fid import distance_to
    from diffusion.evaluation.intervals import mean_adherence_of_hits, paired_bootstrap_interval

    project, fid_of_projected = distance_to(reference["mu"].numpy(), reference["sigma"].numpy())
    loaded = {}

    def data(row):
        if row["per_image"] not in loaded:
            arrays = np.load(out / row["per_image"])
            loaded[row["per_image"]] = (project(arrays["features"]), arrays["hits"])
        return loaded[row["per_image"]]

    def difference(a: dict, b: dict) -> dict:
        (features_a, hits_a), (features_b, hits_b) = data(a), data(b)
        adherence = paired_bootstrap_interval(hits_a, hits_b, mean_adherence_of_hits)
        fid = paired_bootstrap_interval(features_a, features_b, fid_of_projected, resamples=200, recentre=True)
        return {"against": b["method"] if b["scale"] == 1.0 else f"{b['method']} w={b['scale']:g}",
                "adherence": [a["adherence_mean"] - b["adherence_mean"], *adherence],
                "fid": [a["fid"] - b["fid"], *fid]}

    cfg_rows = [r for r in rows if r.get("per_image") and (r["method"] == "cfg" or r["scale"] == 1.0)]
    for row in rows:
        if not row.get("per_image") or row in cfg_rows:
            continue
        same = next((r for r in cfg_rows if r["method"] == "cfg" and r["scale"] == row["scale"]), None)
        nearest = min(cfg_rows, key=lambda r: abs(r["adherence_mean"] - row["adherence_mean"]), default=None)
        row["vs_cfg_same_w"] = difference(row, same) if same else None
        row["vs_cfg_nearest"] = difference(row, nearest) if nearest else None


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
    lines = ["| method | w | network evaluations / image (main + guide) | adherence [95%] | FID-by-probe [95%] | "
             "paired, minus CFG at the same w: adherence (points), FID | paired, minus the CFG row nearest in "
             "adherence: which, adherence (points), FID |", "|---|---|---|---|---|---|---|"]

    def paired(comparison: dict | None, name: bool) -> str:
        if not comparison:
            return ""
        (a, a_low, a_high), (f, f_low, f_high) = comparison["adherence"], comparison["fid"]
        return ((f"{comparison['against']}: " if name else "") + f"{100 * a:+.1f} [{100 * a_low:+.1f}, "
                f"{100 * a_high:+.1f}], {f:+.0f} [{f_low:+.0f}, {f_high:+.0f}]")

    for r in rows:
        low, high = r["adherence_mean_interval"]
        evaluations = f"{r['network_evaluations_per_image']:.0f}" + (
            f" + {r['guide_evaluations_per_image']:.0f}" if r["guide_evaluations_per_image"] else "")
        lines.append(f"| {r['method']} | {r['scale']:g} | {evaluations} | {100 * r['adherence_mean']:.1f}% "
                     f"[{100 * low:.1f}, {100 * high:.1f}] | {r['fid']:.1f} [{r['fid_interval'][0]:.1f}, "
                     f"{r['fid_interval'][1]:.1f}] | {paired(r.get('vs_cfg_same_w'), False)} | "
                     f"{paired(r.get('vs_cfg_nearest'), True)} |")
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
