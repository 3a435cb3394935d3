"""`doodl-ray generate`: one image with DOODL or a baseline, its score before and after, and its history."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from doodl_ray.config import PriorConfig, SamplerConfig, validation_problems
from doodl_ray.methods import METHODS, MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.methods.specs.search_refine import SearchConfig
from doodl_ray.errors import InvalidInput

DTYPES = ("bfloat16", "float16", "float32", "float64")  # torch dtype names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one image", description=__doc__)
    p.add_argument("--model", required=True, help="diffusers model: hub id, local folder, or s3:// folder")
    p.add_argument("--prompt", help="text prompt (text-to-image models)")
    p.add_argument("--class-label", type=int, help="class for class-conditional pixel models")
    p.add_argument("--guidance", choices=["none", "classifier"], default="none",
                   help="guidance kind; any other kind via --guidance-spec")
    p.add_argument("--classifier", help="TorchScript classifier file (with --guidance classifier)")
    p.add_argument("--guidance-spec", type=Path, help="YAML file holding one guidance spec (any type)")
    p.add_argument("--evaluation-spec", type=Path,
                   help="YAML guidance spec of an independent model that scores the image before and after")
    p.add_argument("--target", help="guidance target: class index or name, text, ...")
    p.add_argument("--method", default="doodl", metavar="NAME",
                   help="; ".join(f"{name}: {plugin.summary}" for name, plugin in METHODS.items())
                   + "; or package.module:name, a method another package registers")
    p.add_argument("--setting", action="append", default=[], metavar="BLOCK.FIELD=VALUE",
                   help="any method setting, e.g. particles.resampling=systematic or das.kl=0.3 (repeatable; "
                        "the blocks: " + ", ".join(sorted({b for m in METHODS.values() for b in [m.block] if b})) + ")")
    p.add_argument("--budget", type=int, help="compute per item in UNet evaluations (sets candidates/iterations)")
    p.add_argument("--iterations", type=int, default=DoodlConfig().iterations)
    p.add_argument("--optimizer", choices=["reference", "normalized", "adam"], default="reference")
    p.add_argument("--lr", type=float, default=DoodlConfig().lr)
    p.add_argument("--gradient", choices=["checkpoint", "reversible"], default="checkpoint")
    p.add_argument("--prior-weight", type=float, default=DoodlConfig().prior_weight,
                   help="DOODL: weight of the diffusion prior (the model's own denoising error) in the loss")
    p.add_argument("--prior-selection", type=float, default=PriorConfig().selection,
                   help="weight of the diffusion prior in ranking iterates, candidates and particles")
    p.add_argument("--stop-probability", type=float, help="stop an item once its target class probability reaches this")
    p.add_argument("--stop-loss", type=float, help="stop an item once its guidance loss is at most this")
    p.add_argument("--stop-prior", type=float, help="...and its diffusion prior is at most this")
    p.add_argument("--guidance-scale", type=float, default=MethodConfig().guidance_scale)
    p.add_argument("--raw-gradient", action="store_true", help="one-step: do not normalize the guidance gradient")
    p.add_argument("--candidates", type=int, help="best-of-n: samples (default 8); one-step: guided samples (1)")
    p.add_argument("--search-candidates", type=int, help="search-refine: candidates (default: a share of the budget)")
    p.add_argument("--search-starts", type=int, default=SearchConfig().starts,
                   help="search-refine: DOODL restarts from the next-best candidates")
    p.add_argument("--particles", type=int, help="particles: particles per item (default: from the budget)")
    p.add_argument("--micro-batch", type=int, help="most particles per network call (particles, das, lookahead, "
                   "search-refine): bounds memory at large budgets, same results (default: all at once)")
    p.add_argument("--steps", type=int, default=SamplerConfig().steps)
    p.add_argument("--cfg-scale", type=float, default=SamplerConfig().cfg_scale)
    p.add_argument("--mix", type=float, default=SamplerConfig().mix, help="EDICT mixing weight p")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, help="UNet dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--out", type=Path, default=Path("out.png"), help="image path; the history goes beside it")
    p.set_defaults(func=run)


def method_from_args(args: argparse.Namespace) -> MethodConfig:
    """The method settings of the flags, then any --setting BLOCK.FIELD=VALUE on top."""
    from doodl_ray.jobs.spec import apply_overrides

    data = dict(
        name=args.method, budget=args.budget, guidance_scale=args.guidance_scale,
        normalize_gradient=not args.raw_gradient, candidates=args.candidates,
        sampler=dict(steps=args.steps, cfg_scale=args.cfg_scale, mix=args.mix, height=args.height, width=args.width),
        doodl=dict(iterations=args.iterations, optimizer=args.optimizer, lr=args.lr, gradient=args.gradient,
                   prior_weight=args.prior_weight),
        prior=dict(selection=args.prior_selection),
        stop=dict(target_probability=args.stop_probability, guide_loss=args.stop_loss, prior=args.stop_prior),
        search=dict(candidates=args.search_candidates, starts=args.search_starts),
        particles=dict(count=args.particles),
    )
    try:
        return MethodConfig.model_validate(apply_overrides(data, args.setting))
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, "method")) from None


def guidance_from_args(args: argparse.Namespace):
    """The guidance spec named on the command line, or None."""
    from doodl_ray.guidance.spec import ClassifierGuidanceConfig, load_guidance_spec

    if args.guidance_spec:
        if args.guidance != "none" or args.classifier:
            raise InvalidInput("give either --guidance-spec or --guidance/--classifier, not both")
        return load_guidance_spec(args.guidance_spec)
    if args.guidance == "classifier":
        if not args.classifier:
            raise InvalidInput("--guidance classifier needs --classifier FILE")
        return ClassifierGuidanceConfig(model=args.classifier)
    if args.classifier:
        raise InvalidInput("--classifier needs --guidance classifier")
    return None


def run(args: argparse.Namespace) -> int:
    from doodl_ray.engine import Engine, Item

    method = method_from_args(args)
    guidance = guidance_from_args(args)
    if guidance is not None and args.target is None and args.prompt is None:
        raise InvalidInput("guided generation needs --target (or a --prompt for text guidance)")
    if method.name != "none" and guidance is None:
        raise InvalidInput(f"--method {method.name} needs guidance (--guidance classifier or --guidance-spec)")
    from doodl_ray.guidance.spec import load_guidance_spec

    evaluation = load_guidance_spec(args.evaluation_spec) if args.evaluation_spec else None
    import torch

    engine = Engine(args.model, guidance, method, device=args.device, dtype=getattr(torch, args.dtype or "", None),
                    evaluation=evaluation, micro_batch=args.micro_batch)
    item = engine.validate(Item(id=args.out.stem, seed=args.seed, prompt=args.prompt, target=args.target,
                                class_label=args.class_label))
    (result,) = engine.run([item])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = result.image[..., 0] if result.image.shape[-1] == 1 else result.image
    Image.fromarray(image).save(args.out)
    history_path = args.out.with_suffix(".history.json")
    history_path.write_text(json.dumps({
        "method": method.model_dump(), "seed": args.seed, "target": item.target, "prompt": args.prompt,
        "initial_loss": result.initial_loss, "final_loss": result.final_loss,
        "best_iteration": result.best_iteration, "history": result.history, "terms": result.terms,
        "scores": result.scores, "seconds": result.seconds, "compute": result.compute, "noise_hash": result.noise_hash,
    }, indent=2))
    print(f"loss before: {result.initial_loss:.4f}  after: {result.final_loss:.4f}  "
          f"(best iteration {result.best_iteration}, {result.compute['unet_evals']} UNet evaluations, "
          f"{result.seconds:.1f} s)")
    if result.scores:
        print("scores: " + "  ".join(f"{name} {value:.4f}" for name, value in sorted(result.scores.items())))
    print(f"wrote {args.out} and {history_path}")
    return 0

