"""Guidance methods on the exact testbed: distribution error of CFG, interval, APG, CFG rescale and autoguidance over a
guidance-strength sweep, where the true distribution is known, with 95% intervals over sampling seeds.

    python experiments/guidance/testbed.py                    # ~1-2 CPU-minutes
    python experiments/guidance/testbed.py --seeds 3 --num 500 --scales 1 2 3   # quicker

Set-up (EDM2's autoguidance argument, Karras et al. 2024 section 3, made exact): the data are the 2-D toy mixture
(diffusion/testbed/toy.py, two classes of thin ridges). The *model* has one known error: it is the mixture blurred by
s_model (every covariance + s^2 I), i.e. it has not learnt how thin the ridges are; its conditional and unconditional
halves are the exact denoisers of that blurred mixture. Autoguidance's *guide* is the mixture blurred more, s_guide (a
weaker version of the same model). Every method is the framework's own guidance wrapper (diffusion/guidance/, options
from conf/guidance/) on the exact networks, sampled by the framework's Heun sampler (EDM objective, Karras sigmas), so
the only approximation besides the known blur is the sampler's (shown by the unguided exact model's row).

Metrics per seed, each over both classes (half the samples each): sliced Wasserstein distance to 20 000 true samples
of the prompted class from 10 000 true samples of it (averaged over the two classes); mean true log-density log p(x0 | c); class adherence (the share
of samples whose most likely class under the true mixture is the prompted one); mode coverage (total variation between
the samples' component responsibilities and the class's component weights). Intervals: mean over seeds +- t_{0.975}
standard error; the change in distance from the unguided model is paired seed by seed (the same start noises).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from diffusion.conditioning import Cond  # noqa: E402
from diffusion.evaluation.intervals import seed_summary  # noqa: E402
from diffusion.guidance import conditional, guided_denoiser  # noqa: E402
from diffusion.objectives import EDMObjective  # noqa: E402
from diffusion.samplers import HeunSampler, sample_loop, start  # noqa: E402
from diffusion.testbed import (broadened, exact_network, mean_log_density, mode_coverage, posterior_weights,  # noqa: E402
                               sample, sliced_wasserstein, toy_mixture_2d)

METHODS = ("cfg", "interval", "apg", "rescale", "auto")
SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
OUT = Path(__file__).resolve().parent


def class_adherence(truth, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose most likely class under the true clean mixture is the prompted one."""
    w = posterior_weights(truth, x, 0.0)  # [N, K]
    per_class = torch.stack([w[:, truth.classes == c].sum(1) for c in range(truth.num_classes)], dim=1)
    return float((per_class.argmax(1) == labels).double().mean())


def scores(truth, x: torch.Tensor, labels: torch.Tensor, references: dict) -> dict:
    per_class = []
    for c, reference in references.items():
        mine = x[labels == c]
        per_class.append({"sw": sliced_wasserstein(mine, reference),
                          "coverage_tv": mode_coverage(truth.class_mixture(c), mine).total_variation})
    return {"sw": sum(p["sw"] for p in per_class) / len(per_class),
            "log_density": mean_log_density(truth, x, labels),
            "adherence": class_adherence(truth, x, labels),
            "coverage_tv": sum(p["coverage_tv"] for p in per_class) / len(per_class)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=500, help="samples per class and seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=24, help="Heun steps (47 denoiser calls)")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--s-model", type=float, default=0.05, help="the model's blur (its known error)")
    p.add_argument("--s-guide", type=float, default=0.10, help="the autoguidance guide's blur")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest on a shared CPU
    began = time.time()

    truth = toy_mixture_2d()
    model, guide = broadened(truth, args.s_model), broadened(truth, args.s_guide)
    objective = EDMObjective()
    sampler = HeunSampler(objective)
    model_net, guide_net, truth_net = (exact_network(m, objective) for m in (model, guide, truth))
    labels = torch.arange(2 * args.num) % 2  # both classes, alternating
    cond, uncond = Cond(class_labels=labels), Cond(class_labels=torch.full_like(labels, -1))
    references = {c: sample(truth, 10_000, torch.Generator().manual_seed(10_000 + c), class_labels=c) for c in (0, 1)}
    options = {m: OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "guidance" / f"{m}.yaml")) for m in METHODS}

    def draw(network, spec, scale, seed, guide_network=None):
        """Samples [2 num, 2] for one seed, and the network evaluations per sample (the model's and the guide's; a
        batched CFG pass over [x; x] is two)."""
        rows = [0]

        def counted(net):
            def network_call(x_in, time_, c=None):
                rows[0] += x_in.shape[0]
                return net(x_in, time_, c)
            return network_call

        noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x, levels = start(sampler, noise, args.steps)
        guide_fn = None if guide_network is None else conditional(counted(guide_network), cond)
        denoise = guided_denoiser(spec, counted(network), cond, uncond, scale, objective=objective, guide=guide_fn)
        return sample_loop(sampler, denoise, x, levels), rows[0] / len(labels)

    def true_samples(seed):  # interleaved like `labels`
        g = torch.Generator().manual_seed(100 + seed)
        return torch.stack([sample(truth, args.num, g, class_labels=c) for c in (0, 1)], dim=1).reshape(-1, 2)

    rows = []

    def record(name, scale, runs):  # runs: [(samples, network evaluations per sample)] over seeds
        per_seed = [scores(truth, x, labels, references) for x, _ in runs]
        summary = {key: seed_summary([s[key] for s in per_seed]) for key in per_seed[0]}
        unguided = next((r for r in rows if r["method"] == "model, unguided"), None)
        if unguided is not None:  # the same start noises: the change in distance, paired seed by seed
            summary["sw_change"] = seed_summary([a["sw"] - b["sw"] for a, b in zip(per_seed, unguided["per_seed"])])
        rows.append({"method": name, "scale": scale, "network_calls": runs[0][1], "per_seed": per_seed, **summary})
        print(name, scale, {k: round(v["mean"], 4) for k, v in summary.items()}, f"{time.time() - began:.0f}s", flush=True)

    seeds = list(range(args.seeds))
    record("true samples", None, [(true_samples(s), 0) for s in seeds])
    record("exact model (no blur), unguided", 1.0, [draw(truth_net, {"name": "cfg"}, 1.0, s) for s in seeds])
    for method in METHODS:
        for scale in args.scales:
            if scale == 1.0 and method != "cfg":
                continue  # w = 1 is the conditional model alone for every method: one row
            runs = [draw(model_net, options[method], scale, s, guide_net if method == "auto" else None) for s in seeds]
            record("model, unguided" if scale == 1.0 else method, scale, runs)

    args.out.mkdir(parents=True, exist_ok=True)
    minutes = (time.time() - began) / 60
    result = {"command": "python " + " ".join(["experiments/guidance/testbed.py", *sys.argv[1:]]),
              "minutes": round(minutes, 2), "num_per_class": args.num, "seeds": args.seeds, "heun_steps": args.steps,
              "s_model": args.s_model, "s_guide": args.s_guide, "options": options, "rows": rows}
    (args.out / "testbed_results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "testbed_table.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "testbed_tradeoff.png")
    print(table(rows))
    print(f"{minutes:.1f} min")


def cell(summary: dict, digits: int, percent: bool = False) -> str:
    scale = 100 if percent else 1
    mean = summary["mean"] * scale
    if "t_interval" not in summary:
        return f"{mean:.{digits}f}"
    half = (summary["t_interval"][1] - summary["t_interval"][0]) * scale / 2
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| method | w | network evaluations / sample | sliced W (x1000) | change from the unguided model, paired (x1000) "
             "| true log-density | class adherence | coverage TV |", "|---|---|---|---|---|---|---|---|"]

    def thousand(summary):
        return {k: (v * 1000 if isinstance(v, float) else [u * 1000 for u in v]) if k in ("mean", "t_interval") else v
                for k, v in summary.items()}

    for r in rows:
        sw = thousand(r["sw"])
        change = cell(thousand(r["sw_change"]), 1) if "sw_change" in r else ""
        scale = "" if r["scale"] is None else f"{r['scale']:g}"
        calls = f"{r['network_calls']:g}" if r["network_calls"] else ""
        lines.append(f"| {r['method']} | {scale} | {calls} | "
                     f"{cell(sw, 1)} | {change} | {cell(r['log_density'], 3)} | {cell(r['adherence'], 2, True)}% | "
                     f"{cell(r['coverage_tv'], 3)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    unguided = next(r for r in rows if r["method"] == "model, unguided")
    truth = rows[0]
    for i, (key, label) in enumerate((("log_density", "mean true log-density log p(x0 | c)"),
                                      ("adherence", "class adherence"))):
        ax = figure.add_subplot(1, 2, i + 1)
        for method in METHODS:
            mine = [unguided] + [r for r in rows if r["method"] == method]
            xs = [r[key]["mean"] for r in mine]
            ys = [1000 * r["sw"]["mean"] for r in mine]
            errors = [1000 * (r["sw"]["t_interval"][1] - r["sw"]["t_interval"][0]) / 2 if "t_interval" in r["sw"] else 0
                      for r in mine]
            ax.errorbar(xs, ys, yerr=errors, marker="o", ms=3, capsize=2, label=method)
            for r, x_, y_ in zip(mine, xs, ys):
                ax.annotate(f"{r['scale']:g}", (x_, y_), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axvline(truth[key]["mean"], color="k", ls=":", lw=1, label="true samples")
        ax.axhline(1000 * truth["sw"]["mean"], color="k", ls=":", lw=1)
        ax.set(xlabel=label, ylabel="sliced Wasserstein x1000 (lower is better)", yscale="log")
        ax.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle("exact testbed: distance to the true class distribution against log-density and adherence "
                    "(labels: w; bars: 95% interval over seeds)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
