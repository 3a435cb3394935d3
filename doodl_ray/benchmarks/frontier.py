"""Quality at every compute budget on the shipped digits models (the paper's fine-grained-classifier comparison
in miniature): each method at a ladder of budgets in UNet evaluations, both settings, paired tests between the
best method and the best baseline, and a one-step scale sweep at one guided sample.

Every method starts from the same initial noise per (target, seed) and is guided by the same guide classifier
through `Engine` with `method.budget` set, so compute is what the engine counted, not an estimate. Baselines as
their authors run them: one-step x0 guidance on a single DDIM chain (best-of-k guided samples at larger budgets,
its scale chosen by a sweep at one sample), best-of-N unguided search, Feynman-Kac particle steering, DAS (SMC
twisted by the one-step gradient) and gradient-free pCN chains over the initial noise. The project's methods, all
of them moved by the exact gradient of the rendered pixels: DOODL (EDICT or one checkpointed chain, with and
without the diffusion prior), search-refine, lookahead (DAS's SMC twisted by a short exact render) and
noise-langevin (pCNL chains over the initial noise). A method runs only at budgets where it can make an image. An independent judge decides
correctness; realistic-and-correct also requires the nearest-training-image distance to be within tau, the 95th
percentile of that distance over real test images. Paired exact McNemar tests use the same items."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from doodl_ray.methods.registry import MethodConfig, method_plugin
from doodl_ray.methods.specs.particles import ParticleConfig
from doodl_ray.contact_sheet import contact_sheet
from doodl_ray.digits import ASSETS_DIR
from doodl_ray.digits.data import RARE_CLASSES, load_split, nearest_train_distance

BASELINES = ("one-step", "best-of-n", "particles")


@dataclass(frozen=True)
class Variant:
    """A named method setting, run at the ladder's budgets from `min_budget` to `max_budget` (single-chain samples)."""

    label: str
    config: dict[str, Any]
    baseline: bool
    min_budget: float = 1
    max_budget: float = float("inf")

    @property
    def method(self) -> str:
        return self.config["name"]


def variants(args: argparse.Namespace, setting: str, stop_prior: float | None) -> list[Variant]:
    """The methods compared in `setting`, with the settings measured on held-out seeds (see BENCHMARKS.md);
    `stop_prior` is the setting's calibrated prior threshold."""
    doodl = dict(optimizer="normalized", lr=args.lr)
    chains = dict(chains=args.chains, kl=args.chain_kl, render_steps=min(args.chain_render_steps, args.steps))
    stop = dict(target_probability=args.stop_probability, prior=stop_prior)
    select = "" if args.das_select == "weight" else f" {args.das_select}"
    out = [
        Variant("none", dict(name="none"), True, 1, 1),
        Variant("best-of-n", dict(name="best-of-n"), True, 1),
        Variant(f"one-step {args.one_step_gradient[:4]} s={args.one_step_scale:g}",
                dict(name="one-step", guidance_scale=args.one_step_scale,
                     normalize_gradient=args.one_step_gradient == "normalized"), True, 2),
        Variant("particles", dict(name="particles", particles=dict(temperature=args.particle_temperature,
                                                                   interval=args.particle_interval)), True, 1),
        Variant("doodl", dict(name="doodl", doodl=doodl), False, 8),
        Variant(f"doodl + prior {args.prior_weight:g}", dict(name="doodl", doodl=doodl | dict(prior_weight=args.prior_weight)),
                False, 8),
        Variant("search-refine", dict(name="search-refine", doodl=doodl | dict(lr=args.refine_lr, prior_weight=args.prior_weight),
                                      prior=dict(selection=args.prior_selection), stop=stop,
                                      search=dict(fraction=args.search_fraction, starts=args.search_starts)), False, 1),
        Variant(f"doodl-chain + prior {args.prior_weight:g}",
                dict(name="doodl", doodl=doodl | dict(prior_weight=args.prior_weight, sampler="chain")), False, 3),
        Variant(f"das a={args.das_kl:g}{select}", dict(name="das", das=dict(kl=args.das_kl, select=args.das_select)),
                True, 1),
        Variant(f"lookahead {args.lookahead_steps} until {args.lookahead_until:g} a={args.das_kl:g}{select}",
                dict(name="lookahead", lookahead=dict(kl=args.das_kl, steps=args.lookahead_steps,
                                                      until=args.lookahead_until, select=args.das_select)), False, 1),
        Variant(f"noise-langevin a={args.chain_kl:g} h={args.langevin_step:g}",
                dict(name="noise-langevin", noise_langevin=chains | dict(step_size=args.langevin_step)), False, 1),
        Variant(f"noise-mcmc a={args.chain_kl:g}", dict(name="noise-mcmc", noise_mcmc=chains), True, 1),
    ]
    for normalize, scales in ((False, args.raw_scales), (True, args.normalized_scales)):
        for scale in scales:  # the sweep that chose the one-step scale: one guided sample each
            out.append(Variant(f"one-step {'norm' if normalize else 'raw'} s={scale:g} (sweep)",
                               dict(name="one-step", guidance_scale=scale, normalize_gradient=normalize), True, 2, 2))
    caps = dict(_cap(c) for c in args.cap)
    out = [replace(v, max_budget=min(v.max_budget, caps.get(v.method, v.max_budget),
                                     caps.get(f"{setting}:{v.method}", v.max_budget))) for v in out]
    return [v for v in out if args.methods is None or v.method in args.methods or v.label in args.methods]


def runs_at(variant: Variant, budget: float, steps: int) -> bool:
    """Whether `variant` runs at `budget` single-chain samples: inside its range and at least the budget its
    method needs for one image (the registry's count)."""
    config = MethodConfig.model_validate({**variant.config, "sampler": {"steps": steps}})
    least = config.plugin.least_budget(config, steps, len(config.prior.levels)) / steps
    return max(variant.min_budget, least) <= budget <= variant.max_budget


def _cap(text: str) -> tuple[str, float]:
    name, _, budget = text.partition("=")
    try:
        return name, float(budget)
    except ValueError:
        raise SystemExit(f"--cap {text!r}: expected [SETTING:]METHOD=SAMPLES, e.g. doodl=152") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", choices=["balanced", "rare"], default=["balanced", "rare"])
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="folder with balanced/, rare/, guide.pt, judge.pt")
    parser.add_argument("--guide", type=Path, help="the guide classifier (default: the assets' guide.pt), e.g. "
                        "doodl_ray/assets/digits/guide-robust.pt; the judge stays the assets' judge.pt")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per target, balanced (10 targets)")
    parser.add_argument("--rare-seeds", type=int, default=10, help="seeds per target, rare (targets 3, 5, 8)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + n - 1")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps for every method")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 3, 10, 50.67, 152, 456],
                        help="budgets in single-chain samples (x steps = UNet evaluations): 152 = DOODL-25, 50.67 = a third of it")
    parser.add_argument("--methods", nargs="+", help="only these methods (none best-of-n one-step particles doodl "
                        "search-refine das lookahead noise-langevin noise-mcmc) or variant labels")
    parser.add_argument("--cap", nargs="+", default=[], metavar="[SETTING:]METHOD=SAMPLES",
                        help="stop a method's ladder at this budget, e.g. doodl=152 or rare:particles=152")
    parser.add_argument("--cache", type=Path, help="folder keeping each finished (setting, method, budget) result: "
                        "a rerun with the same settings skips it, so a killed run resumes")
    parser.add_argument("--crops", type=int, default=8, help="multi-crop augmentation for the guide")
    parser.add_argument("--lr", type=float, default=0.05, help="DOODL's normalized step")
    parser.add_argument("--prior-weight", type=float, default=20.0)
    parser.add_argument("--prior-selection", type=float, default=10.0)
    parser.add_argument("--stop-probability", type=float, default=0.9)
    parser.add_argument("--stop-prior-quantile", type=float, default=0.95,
                        help="search-refine stops an item once its prior is below this quantile of the model's prior "
                             "on real test images (0: on the guide alone)")
    parser.add_argument("--refine-lr", type=float, default=0.02, help="search-refine's DOODL step")
    parser.add_argument("--search-fraction", type=float, default=0.25)
    parser.add_argument("--search-starts", type=int, default=3)
    parser.add_argument("--one-step-scale", type=float, default=0.3,
                        help="one-step scale (0.3 normalized: the best of the sweep on held-out seeds 50-)")
    parser.add_argument("--one-step-gradient", choices=["raw", "normalized"], default="normalized")
    parser.add_argument("--raw-scales", type=float, nargs="*", default=[0.1, 0.3, 1.0, 3.0],
                        help="one-step sweep, raw gradient, at one guided sample")
    parser.add_argument("--normalized-scales", type=float, nargs="*", default=[0.03, 0.1, 0.3, 1.0],
                        help="one-step sweep, per-image normalized gradient, at one guided sample")
    parser.add_argument("--particle-temperature", type=float, default=ParticleConfig().temperature,
                        help="FK steering lambda")
    parser.add_argument("--particle-interval", type=int, default=ParticleConfig().interval)
    parser.add_argument("--das-kl", type=float, default=0.1, help="DAS's and lookahead's alpha")
    parser.add_argument("--das-select", choices=["weight", "value", "medoid"], default="weight",
                        help="which final particle DAS and lookahead return (das.select)")
    parser.add_argument("--lookahead-steps", type=int, default=3, help="levels of lookahead's render")
    parser.add_argument("--lookahead-until", type=float, default=0.3,
                        help="lookahead renders ahead in this first fraction of the steps (0.3: chosen on held-out seeds 50-57 at 1520 evaluations)")
    parser.add_argument("--chain-kl", type=float, default=0.1, help="noise-langevin's and noise-mcmc's alpha")
    parser.add_argument("--chains", type=int, default=4, help="noise-langevin's and noise-mcmc's chains per item")
    parser.add_argument("--langevin-step", type=float, default=0.05,
                        help="noise-langevin's h (noise-mcmc keeps its default; Langevin moves need a smaller one)")
    parser.add_argument("--chain-render-steps", type=int, default=10, help="steps the noise chains render through")
    parser.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    parser.add_argument("--micro-batch", type=int, help="most particles per network call (bounds each worker's "
                        "memory at large budgets; same results)")
    parser.add_argument("--plot", type=Path, help="PNG: rate vs budget, a line per method, a panel per setting")
    parser.add_argument("--sheet", type=Path, help="contact sheets SHEET-SETTING.png at --sheet-budget: a row per "
                        "method, a column per target (its first seed)")
    parser.add_argument("--sheet-budget", type=float, default=152, help="in single-chain samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    ladder = sorted(set(args.budgets) | {1, 2})
    thresholds = {s: real_prior_quantile(args.assets / s, args.stop_prior_quantile) for s in args.settings}
    realism = real_realism()
    tasks = [(setting, v, budget) for setting in args.settings for v in variants(args, setting, thresholds[setting])
             for budget in ladder
             if runs_at(v, budget, args.steps) and (budget in args.budgets or budget == v.max_budget)]
    started = time.perf_counter()
    outcomes = _run_tasks(args, tasks, realism)
    report: dict[str, Any] = {"settings": {}, "steps": args.steps, "crops": args.crops,
                              "seconds": time.perf_counter() - started}
    sheets: dict[str, list] = {}
    for (setting, v, budget), outcome in zip(tasks, outcomes):
        images = [np.asarray(image, dtype=np.uint8) for image in outcome.pop("images")]
        if budget == args.sheet_budget or (v.max_budget < args.sheet_budget and budget == v.max_budget):
            sheets.setdefault(setting, []).append((v.label, images))
        entry = report["settings"].setdefault(setting, {"methods": {}, **outcome.pop("setting")})
        entry["methods"].setdefault(v.label, {"baseline": v.baseline, "config": v.config, "points": [],
                                              "gradient": method_plugin(v.method).gradient})
        entry["methods"][v.label]["points"].append({"budget": int(budget * args.steps), **outcome})
    for setting, entry in report["settings"].items():
        entry["tests"] = paired_tests(entry["methods"], [int(b * args.steps) for b in args.budgets])
        entry["stop_prior"] = thresholds[setting]
    print(tables(report))
    if args.plot:
        plot(report, args.plot)
        print(f"plot: {args.plot}")
    if args.sheet:
        for setting, rows in sheets.items():
            path = args.sheet.with_name(f"{args.sheet.stem}-{setting}{args.sheet.suffix or '.png'}")
            entry = report["settings"][setting]
            contact_sheet(rows, [str(t) for t in entry["targets"]]).save(path)
            print(f"contact sheet: {path}")
    if args.json:
        print(json.dumps(report))
    return 0


def _run_tasks(args: argparse.Namespace, tasks: list[tuple], realism: dict[str, float]) -> list[dict[str, Any]]:
    """Every task's outcome, cheapest first (by budget, then the setting's items; DOODL last within them) so
    that a run cut short has whole lower rungs, each one saved to `--cache` as it finishes."""
    paths = [args.cache / f"{_task_key(args, *t)}.json" if args.cache else None for t in tasks]
    outcomes: list[dict[str, Any] | None] = [json.loads(p.read_text()) if p and p.exists() else None for p in paths]
    items = {s: len(_targets(args, s)) * len(_seeds(args, s)) for s in args.settings}
    todo = sorted((i for i, o in enumerate(outcomes) if o is None),
                  key=lambda i: (tasks[i][2], items[tasks[i][0]], tasks[i][1].method == "doodl"))
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
        print(f"frontier: {len(tasks) - len(todo)} of {len(tasks)} results from {args.cache}", file=sys.stderr)
    with ProcessPoolExecutor(args.workers, initializer=_one_thread) as pool:
        futures = {pool.submit(_task, (args, *tasks[i], realism)): i for i in todo}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            outcomes[i] = future.result()
            if paths[i]:
                tmp = paths[i].with_suffix(".tmp")
                tmp.write_text(json.dumps(outcomes[i]))
                tmp.replace(paths[i])
            setting, variant, budget = tasks[i]
            print(f"frontier: {done}/{len(todo)} {setting} {variant.label} at {budget:g} samples: "
                  f"{outcomes[i]['real_correct']:.2f} ({outcomes[i]['sec_per_image']:.2f} s/image)", file=sys.stderr)
    return outcomes


def _task_key(args: argparse.Namespace, setting: str, variant: Variant, budget: float) -> str:
    """What a task's result depends on: its items, method settings, budget and guide."""
    n = len(_seeds(args, setting))
    budget = int(budget) if float(budget).is_integer() else float(budget)  # --budgets 10 and the default 10 agree
    guide = [str(args.guide.resolve())] if args.guide else []  # keys of runs with the assets' own guide unchanged
    text = json.dumps([str(args.assets.resolve()), setting, variant.config, budget, args.steps, args.crops,
                       args.first_seed, n, *guide], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def guide_path(args: argparse.Namespace) -> Path:
    """The classifier that guides (and that acceptance rules read): `--guide`, or the assets' own."""
    return args.guide or args.assets / "guide.pt"


def real_prior_quantile(model: Path, quantile: float) -> float | None:
    """A quantile of the model's own diffusion prior over real test digits: how likely a real digit looks to it."""
    return float(torch.quantile(_real_prior(str(Path(model).resolve())), quantile)) if quantile else None


@functools.cache
@torch.no_grad()
def _real_prior(model: str) -> torch.Tensor:
    """The model's prior on every real test digit, computed once per model: `bench ladder` asks for two quantiles
    of it (the frontier's stopping rule and the acceptance rule) and each pass costs about 13 s on a CPU."""
    from doodl_ray.config import PriorConfig
    from doodl_ray.digits.data import to_model_range
    from doodl_ray.methods.prior import DiffusionPrior
    from doodl_ray.models import load_diffusion

    _, _, test_x, _ = load_split()
    diffusion = load_diffusion(model)
    prior = DiffusionPrior(diffusion.condition(None, None, None), diffusion.training_pair, PriorConfig().levels,
                           diffusion.latent_shape(None, None), torch.device("cpu"), torch.float32)
    return prior(to_model_range(test_x))


def _targets(args: argparse.Namespace, setting: str) -> list[int]:
    """Every class, or the classes the rare model barely saw (the model set's metrics.json says which)."""
    if setting != "rare":
        return list(range(10))
    metrics = args.assets / "metrics.json"
    return json.loads(metrics.read_text())["data"]["rare_classes"] if metrics.exists() else list(RARE_CLASSES)


def _seeds(args: argparse.Namespace, setting: str) -> range:
    return range(args.first_seed, args.first_seed + (args.rare_seeds if setting == "rare" else args.seeds))


def _items(args: argparse.Namespace, setting: str) -> list:
    """The setting's items, target-major: every target at each of its seeds."""
    from doodl_ray.engine import Item

    return [Item(id=f"{t}-{s}", seed=1000 * s + t, target=t) for t in _targets(args, setting) for s in _seeds(args, setting)]


def real_realism() -> dict[str, float]:
    """tau, the 95th percentile of real test digits' nearest-training-image distance, and that distance's mean:
    the same for every task, so computed once."""
    train_x, _, test_x, _ = load_split()
    real_nn = nearest_train_distance(test_x, train_x)
    return {"tau": float(torch.quantile(real_nn, 0.95)), "real_nn_dist": float(real_nn.mean())}


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _task(task: tuple) -> dict[str, Any]:
    """One method at one budget on one setting's items: per-item outcomes and their summary."""
    from doodl_ray.engine import Engine
    from doodl_ray.guidance.classifier import load_torchscript_classifier
    from doodl_ray.guidance.crops import MultiCrop

    args, setting, variant, budget, realism = task
    targets, seeds, items = _targets(args, setting), _seeds(args, setting), _items(args, setting)
    guide = load_torchscript_classifier(str(guide_path(args)), crops=MultiCrop(args.crops))
    judge = load_torchscript_classifier(str(args.assets / "judge.pt"))
    sampler = {"steps": args.steps} | variant.config.get("sampler", {})  # a method may run at its own steps
    method = MethodConfig.model_validate({**variant.config, "budget": int(budget * args.steps), "sampler": sampler})
    engine = Engine(str(args.assets / setting), guide, method, micro_batch=args.micro_batch)
    start = time.perf_counter()
    results = engine.run([engine.validate(item) for item in items])
    seconds = (time.perf_counter() - start) / len(items)
    images = torch.from_numpy(np.stack([r.image for r in results])).permute(0, 3, 1, 2).float() / 255
    train_x, _, _, _ = load_split()
    tau = realism["tau"]
    labels = torch.tensor(targets).repeat_interleave(len(seeds))
    outcome = metrics(images, labels, guide, judge, train_x, tau)
    evals = [r.compute["unet_evals"] for r in results]
    short = [(r.scores["short_render/loss"], r.final_loss) for r in results if "short_render/loss" in r.scores]
    found = [final for loss, final in short if loss <= math.log(2)]  # the short render made the target likelier than not
    if short:
        outcome["kept"] = sum(final <= math.log(2) for final in found) / len(found) if found else float("nan")
    first = [r.image.tolist() for r in results[:: len(seeds)]]  # each target's first seed, for the contact sheet
    return outcome | {
        "unet_evals_mean": float(np.mean(evals)), "unet_evals_max": int(max(evals)), "sec_per_image": seconds,
        "images": first,
        "setting": {"targets": targets, "seeds": list(seeds), **realism,
                    "items": len(items)},
    }


@torch.no_grad()
def metrics(images: torch.Tensor, labels: torch.Tensor, guide, judge, train_x: torch.Tensor, tau: float) -> dict:
    """Realistic-and-correct (judge correct and NN distance <= tau) per item and overall, judge and guide
    accuracy, judge probability of the target, mean nearest-training-image distance."""
    judge_probs = judge.probabilities(images)
    judge_correct = judge_probs.argmax(1) == labels
    nn = nearest_train_distance(images, train_x)
    real_correct = judge_correct & (nn <= tau)
    return {
        "real_correct": float(real_correct.float().mean()), "judge_acc": float(judge_correct.float().mean()),
        "judge_prob": float(judge_probs.gather(1, labels[:, None]).mean()),
        "guide_acc": float((guide.probabilities(images).argmax(1) == labels).float().mean()),
        "nn_dist": float(nn.mean()), "per_item": real_correct.int().tolist(),
    }


def mcnemar_exact(a: list[int], b: list[int]) -> dict[str, float]:
    """Exact two-sided McNemar test on paired binary outcomes: a binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_best": only_a, "only_baseline": only_b, "p_value": p}


def paired_tests(methods: dict[str, Any], budgets: list[int]) -> list[dict[str, Any]]:
    """At each budget, by realistic-and-correct: the best project method vs the best baseline, and the best
    method that differentiates the true final pixels (`exact`) vs the best that takes no gradient at all."""
    groups = {
        "project vs baseline": (lambda m: not m["baseline"], lambda m: m["baseline"]),
        "exact gradient vs gradient-free": (lambda m: m.get("gradient") == "exact",
                                            lambda m: m.get("gradient") == "none"),
    }
    tests = []
    for budget in budgets:
        at = {label: next((p for p in m["points"] if p["budget"] == budget), None) for label, m in methods.items()}
        for comparison, (first, second) in groups.items():
            ours = [(p["real_correct"], label) for label, p in at.items() if p and first(methods[label])]
            theirs = [(p["real_correct"], label) for label, p in at.items() if p and second(methods[label])]
            if not ours or not theirs:
                continue
            (best_rate, best), (base_rate, base) = max(ours), max(theirs)
            tests.append({"budget": budget, "comparison": comparison, "best": best, "best_rate": best_rate,
                          "baseline": base, "baseline_rate": base_rate,
                          **mcnemar_exact(at[best]["per_item"], at[base]["per_item"])})
    return tests


def tables(report: dict[str, Any]) -> str:
    lines = []
    for setting, entry in report["settings"].items():
        budgets = sorted({p["budget"] for m in entry["methods"].values() for p in m["points"]})
        lines += [f"\n{setting}: {entry['items']} items (targets {entry['targets']} x {len(entry['seeds'])} seeds), "
                  f"{report['steps']} steps; realistic-and-correct (judge correct, NN distance <= tau = {entry['tau']:.3f}) "
                  "at each budget in UNet evaluations; mean evaluations used in brackets", "",
                  "| method | " + " | ".join(str(b) for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
        for label, m in entry["methods"].items():
            cells = {p["budget"]: f"{p['real_correct']:.2f} ({p['unet_evals_mean']:.0f})" for p in m["points"]}
            kind = "" if not m["baseline"] else " (baseline)"
            lines.append(f"| {label}{kind} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        lines += ["", f"{setting}, every point: UNet evaluations used (mean / max), realistic and correct, judge accuracy and "
                  "mean p(target), guide accuracy, mean nearest-training-image distance, seconds per image, and for "
                  "methods that optimize through a shorter sampler, how often the long render keeps the target the "
                  "short one reached (guide p > 1/2 in both)", "",
                  "| method | budget | evals mean / max | real & correct | judge acc | judge p | guide acc | NN dist | "
                  "s / image | kept |", "|---|---|---|---|---|---|---|---|---|---|"]
        for label, m in entry["methods"].items():
            for p in sorted(m["points"], key=lambda p: p["budget"]):
                kept = f"{p['kept']:.2f}" if "kept" in p else ""
                lines.append(f"| {label} | {p['budget']} | {p['unet_evals_mean']:.0f} / {p['unet_evals_max']} | "
                             f"{p['real_correct']:.2f} | {p['judge_acc']:.2f} | {p['judge_prob']:.2f} | "
                             f"{p['guide_acc']:.2f} | {p['nn_dist']:.3f} | {p['sec_per_image']:.2f} | {kept} |")
        lines += ["", "| budget | comparison | best of the first | rate | best of the second | rate | only first | "
                  "only second | McNemar p |", "|---|---|---|---|---|---|---|---|---|"]
        for t in entry["tests"]:
            lines.append(f"| {t['budget']} | {t['comparison']} | {t['best']} | {t['best_rate']:.2f} | {t['baseline']} | "
                         f"{t['baseline_rate']:.2f} | {t['only_best']} | {t['only_baseline']} | {t['p_value']:.3g} |")
    return "\n".join(lines)


@contextmanager
def setting_panels(report: dict[str, Any], path: Path, xlabel: str) -> Iterator[list[tuple[Any, str]]]:
    """A panel per setting of `report` (log budget axis, rate axis), saved to `path` as a PNG when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(report["settings"])
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    yield list(zip(axes[0], settings))
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("realistic and correct")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(report: dict[str, Any], path: Path) -> None:
    with setting_panels(report, path, "budget: UNet evaluations per image") as panels:
        for ax, setting in panels:
            sweep: list[dict] = []
            for label, m in report["settings"][setting]["methods"].items():
                points = sorted(m["points"], key=lambda p: p["budget"])
                if "(sweep)" in label:  # one grey point per scale, not a line per scale
                    sweep += points
                    continue
                style = "--" if m["baseline"] else "-"
                ax.plot([p["budget"] for p in points], [p["real_correct"] for p in points], style, marker="o",
                        label=label)
            if sweep:
                ax.scatter([p["budget"] for p in sweep], [p["real_correct"] for p in sweep], s=14, color="grey",
                           zorder=3, label="one-step scale sweep (one guided sample)")
            ax.set_title(f"{setting} ({report['settings'][setting]['items']} items)")
