"""Post-hoc EMA sigma_rel sweep (Karras et al. 2024, EDM2 Section 3): one real training run that keeps the two
power-function EMA profiles (sigma_rel 0.05 and 0.10) with snapshots every ~1/10 of the run, then EMAs of several
lengths reconstructed from those snapshots, each scored against the run's ordinary EMA checkpoint (last.ckpt,
trainer.ema_decay) with `python -m diffusion.evaluation` (adherence and FID-by-probe, 3 sampling seeds).

    OMP_NUM_THREADS=2 python experiments/posthoc_ema/run.py              # train (6 min) + reconstruct + score + plot
    OMP_NUM_THREADS=2 python experiments/posthoc_ema/run.py --skip-train # reuse outputs/ema_sweep/run

Writes experiments/posthoc_ema/results.json and posthoc_ema_sweep.png; the run and the evaluations stay under
outputs/ema_sweep/.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SIGMA_RELS = [0.02, 0.05, 0.08, 0.12, 0.20]
HERE = Path(__file__).resolve().parent


def sh(args: list[str]) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def ordinary_ema_sigma_rel(decay: float, steps: int) -> float:
    """The constant-decay EMA's profile: weight (1 - b) b^k on the weights k steps back, standard deviation
    sqrt(b) / (1 - b) steps; relative to the run's length (ignores the warmup and the truncation at step 0)."""
    return math.sqrt(decay) / (1 - decay) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "ema_sweep")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--every", type=int, default=120, help="steps between snapshots (~1/10 of a 6-min run on 2 cores)")
    p.add_argument("--sigma-rels", type=float, nargs="+", default=SIGMA_RELS)
    p.add_argument("--num-images", type=int, default=256)
    # base seeds >= --num-images apart: image i has seed base + i, so 0 1 2 would share start noises
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000])
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--rescore", action="store_true", help="re-run evaluations whose evaluation.json exists")
    args = p.parse_args()
    run = args.work / "run"

    if not args.skip_train:
        sh(["train.py", f"hydra.run.dir={run}", f"trainer.max_minutes={args.minutes}", "trainer.fit_schedule_to_time=true",
            "trainer.posthoc_ema.sigma_rels=[0.05,0.10]", f"trainer.posthoc_ema.every={args.every}"])

    from omegaconf import OmegaConf

    from diffusion import checkpoint as ckpt
    from diffusion.training.posthoc_ema import snapshot_paths, write_posthoc_checkpoint

    last = ckpt.load_checkpoint(run / "checkpoints" / "last.ckpt", kind="diffusion")
    steps = int(last["step"])
    decay = float(OmegaConf.create(last["config"]).trainer.ema_decay)
    snapshots = [s.name for s in snapshot_paths(run)]
    del last

    ckpts = [{"name": "ordinary EMA (last.ckpt)", "sigma_rel": None, "ckpt": run / "checkpoints" / "last.ckpt",
              "fit_error": None}]
    for s in args.sigma_rels:
        path, fit_error = write_posthoc_checkpoint(run, s, overwrite=True)
        print(f"sigma_rel={s:g}: {path} (fit error {100 * fit_error:.2f}%)", flush=True)
        ckpts.append({"name": f"post-hoc sigma_rel={s:g}", "sigma_rel": s, "ckpt": path, "fit_error": fit_error})

    rows = []
    for c in ckpts:
        out = args.work / "eval" / (f"sigma_rel_{c['sigma_rel']:g}" if c["sigma_rel"] else "ordinary_ema")
        if not (out / "evaluation.json").exists() or args.rescore:
            sh(["-m", "diffusion.evaluation", "--ckpt", str(c["ckpt"]), "--num-images", str(args.num_images),
                "--seeds", *map(str, args.seeds), "--out", str(out), "--overwrite"])
        result = json.loads((out / "evaluation.json").read_text())
        over = result["over_seeds"]
        rows.append({**{k: (str(v) if isinstance(v, Path) else v) for k, v in c.items()},
                     "adherence_mean": over["adherence_mean"], "fid": over["fid"],
                     "per_seed": [{"seed": r.get("seed"), "adherence_mean": r["adherence_mean"],
                                   "adherence_mean_interval": r.get("adherence_mean_interval"),
                                   "fid": r["fid"], "fid_interval": r.get("fid_interval")} for r in result["per_seed"]],
                     "sampler": result.get("sampler"), "steps": result.get("steps"),
                     "guidance_scale": result.get("guidance_scale"), "generation_seconds":
                         [r.get("generation_seconds") for r in result["per_seed"]]})

    summary = {"training_steps": steps, "ema_decay": decay,
               "ordinary_ema_sigma_rel_approx": ordinary_ema_sigma_rel(decay, steps),
               "snapshots": snapshots, "tracked_sigma_rels": [0.05, 0.10], "seeds": args.seeds,
               "num_images": args.num_images, "rows": rows}
    # paired over seeds (same prompts and start noises for every checkpoint): the per-seed difference to the ordinary
    # EMA, and the t-interval of its mean
    from diffusion.evaluation.intervals import seed_summary

    for r in rows[1:]:
        r["minus_ordinary_paired"] = {k: seed_summary([a - b for a, b in zip(r[k]["values"], rows[0][k]["values"])])
                                      for k in ("adherence_mean", "fid")}
    (HERE / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary)
    (HERE / "table.md").write_text(table(summary) + "\n")
    print(table(summary))


def table(summary: dict) -> str:
    """Mean over seeds [95% t-interval over seeds], and seed 0's bootstrap interval over images."""
    lines = ["| weights | fit error | adherence % (mean [95% t], 3 seeds) | seed 0: adherence [bootstrap 95%] "
             "| FID-by-probe (mean [95% t]) | seed 0: FID [bootstrap 95%] |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        a, f, s0 = r["adherence_mean"], r["fid"], r["per_seed"][0]
        ai, fi = s0["adherence_mean_interval"], s0["fid_interval"]
        fit = "-" if r["fit_error"] is None else f"{100 * r['fit_error']:.1f}%"
        lines.append(f"| {r['name']} | {fit} | {100 * a['mean']:.1f} [{100 * a['t_interval'][0]:.1f}, "
                     f"{100 * a['t_interval'][1]:.1f}] | {100 * s0['adherence_mean']:.1f} [{100 * ai[0]:.1f}, "
                     f"{100 * ai[1]:.1f}] | {f['mean']:.1f} [{f['t_interval'][0]:.1f}, {f['t_interval'][1]:.1f}] | "
                     f"{s0['fid']:.1f} [{fi[0]:.1f}, {fi[1]:.1f}] |")
    return "\n".join(lines)


def plot(summary: dict) -> None:
    from diffusion.tools.inspection import pyplot, save_figure

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    post = [r for r in summary["rows"] if r["sigma_rel"] is not None]
    base = [r for r in summary["rows"] if r["sigma_rel"] is None][0]
    x_base = summary["ordinary_ema_sigma_rel_approx"]
    for ax, key, label, scale in ((left, "adherence_mean", "mean adherence (probe), %", 100), (right, "fid", "FID-by-probe", 1)):
        xs = [r["sigma_rel"] for r in post]
        ys = [scale * r[key]["mean"] for r in post]
        err = [[scale * (r[key]["mean"] - r[key]["t_interval"][0]) for r in post],
               [scale * (r[key]["t_interval"][1] - r[key]["mean"]) for r in post]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label="post-hoc EMA (reconstructed)")
        b = base[key]
        ax.errorbar([x_base], [scale * b["mean"]], yerr=[[scale * (b["mean"] - b["t_interval"][0])],
                                                          [scale * (b["t_interval"][1] - b["mean"])]],
                    fmt="s", color="tab:red", capsize=3, label=f"ordinary EMA (decay {summary['ema_decay']:g}, ~sigma_rel)")
        ax.axhspan(scale * b["t_interval"][0], scale * b["t_interval"][1], color="tab:red", alpha=0.1)
        ax.set(xlabel="sigma_rel", ylabel=label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    figure.suptitle(f"measured: post-hoc EMA sweep, {summary['training_steps']} steps, {summary['num_images']} images "
                    f"x {len(summary['seeds'])} seeds, 95% t-interval over seeds", fontsize=9)
    figure.tight_layout()
    save_figure(figure, HERE / "posthoc_ema_sweep.png")


if __name__ == "__main__":
    main()
