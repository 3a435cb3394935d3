"""Guidance quality on the shipped digits models, the paper's fine-grained-classifier comparison in miniature.

Every method starts from the same initial noise per (target, seed) and is guided by the same guide
classifier: no guidance, one-step x0-estimate guidance (a sweep of scales, raw and normalized), DOODL
(a few iteration budgets, without and with the diffusion prior in its loss), and best-of-N with N set so its
seconds per image match DOODL's slowest run at its largest budget.
An independent judge (other architecture, other seed, never used for guidance) decides correctness;
realistic-and-correct also requires the nearest-training-image distance to be within tau, the 95th
percentile of that distance over real test images."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from doodl_ray.config import DoodlConfig, MethodConfig, PriorConfig, SamplerConfig
from doodl_ray.contact_sheet import contact_sheet
from doodl_ray.digits import ASSETS_DIR
from doodl_ray.digits.data import RARE_CLASSES, load_split, nearest_train_distance
from doodl_ray.engine import Engine, Item
from doodl_ray.guidance.classifier import ClassifierGuidance, load_torchscript_classifier
from doodl_ray.guidance.crops import MultiCrop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--setting", choices=["balanced", "rare"], default="balanced",
                        help="balanced: all 10 digits; rare: the model trained with 3, 5, 8 cut to ~1%%")
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="folder with balanced/, rare/, guide.pt, judge.pt")
    parser.add_argument("--targets", type=int, nargs="+", help="default: all digits (balanced), the rare ones (rare)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per target")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps for every method")
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 25], help="DOODL budgets")
    parser.add_argument("--optimizer", choices=["reference", "normalized", "adam"], default="normalized")
    parser.add_argument("--lr", type=float, default=DoodlConfig().lr)
    parser.add_argument("--doodl-scale", type=float, default=1.0, help="DOODL guidance loss scale")
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[0.0, 20.0],
                        help="DOODL runs at every budget with each weight of the diffusion prior in its loss "
                             "(0: the reference method, guide loss alone)")
    parser.add_argument("--prior-selection", type=float, default=PriorConfig().selection,
                        help="weight of the diffusion prior in DOODL's best-iterate choice")
    parser.add_argument("--raw-scales", type=float, nargs="+", default=[0.1, 0.3, 1.0, 10.0],
                        help="one-step guidance scales on the raw gradient")
    parser.add_argument("--normalized-scales", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0],
                        help="one-step guidance scales on the per-image normalized gradient")
    parser.add_argument("--crops", type=int, default=8, help="multi-crop augmentation for the guide")
    parser.add_argument("--max-candidates", type=int, default=512, help="cap on best-of-N's N")
    parser.add_argument("--sheet", type=Path, help="contact sheet PNG (default out/quality-SETTING.png)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


@dataclass
class Outcome:
    """One method's images for every item, and its seconds per image."""

    images: torch.Tensor  # [N, C, H, W] in [0, 1]
    sec_per_image: float


def run(args: argparse.Namespace) -> int:
    targets = args.targets or (list(RARE_CLASSES) if args.setting == "rare" else list(range(10)))
    model = str(args.assets / args.setting)
    guide = load_torchscript_classifier(str(args.assets / "guide.pt"), crops=MultiCrop(args.crops))
    judge = load_torchscript_classifier(str(args.assets / "judge.pt"))
    train_x, _, test_x, _ = load_split()
    real_nn = nearest_train_distance(test_x, train_x)
    tau = float(torch.quantile(real_nn, 0.95))
    items = [Item(id=f"{t}-{s}", seed=1000 * s + t, target=t) for t in targets for s in range(args.seeds)]
    labels = torch.tensor([item.target for item in items])
    sampler = SamplerConfig(steps=args.steps)

    def generate(method: MethodConfig) -> Outcome:
        engine = Engine(model, guide, method)
        results = engine.run([engine.validate(item) for item in items])
        images = torch.from_numpy(np.stack([r.image for r in results])).permute(0, 3, 1, 2).float() / 255
        return Outcome(images, results[0].seconds)

    outcomes: dict[str, Outcome] = {"none": generate(MethodConfig(name="none", sampler=sampler))}
    for scale in args.raw_scales:
        outcomes[f"one-step raw s={scale:g}"] = generate(MethodConfig(
            name="one-step", guidance_scale=scale, normalize_gradient=False, sampler=sampler))
    for scale in args.normalized_scales:
        outcomes[f"one-step norm s={scale:g}"] = generate(MethodConfig(
            name="one-step", guidance_scale=scale, normalize_gradient=True, sampler=sampler))
    for prior_weight in args.prior_weights:
        for iterations in args.iterations:
            outcomes[doodl_name(iterations, prior_weight)] = generate(MethodConfig(
                name="doodl", guidance_scale=args.doodl_scale, sampler=sampler,
                doodl=DoodlConfig(iterations=iterations, optimizer=args.optimizer, lr=args.lr, prior_weight=prior_weight),
                prior=PriorConfig(selection=args.prior_selection)))
    doodl_seconds = max(outcomes[doodl_name(max(args.iterations), w)].sec_per_image for w in args.prior_weights)
    n = int(min(args.max_candidates, max(1, round(doodl_seconds / outcomes["none"].sec_per_image))))
    outcomes[f"best-of-{n}"] = generate(MethodConfig(name="best-of-n", candidates=n, sampler=sampler))

    report = {
        "methods": {name: metrics(o, labels, guide, judge, train_x, tau) for name, o in outcomes.items()},
        "real_nn_dist": float(real_nn.mean()), "tau": tau, "setting": args.setting, "targets": targets,
        "seeds": args.seeds, "steps": args.steps,
        "doodl": {"optimizer": args.optimizer, "lr": args.lr, "prior_selection": args.prior_selection, "crops": args.crops},
    }
    print(table(report))
    sheet = args.sheet or Path("out") / f"quality-{args.setting}.png"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sheet_rows(outcomes, items, targets), [str(t) for t in targets]).save(sheet)
    print(f"contact sheet: {sheet}")
    if args.json:
        print(json.dumps(report))
    return 0


def doodl_name(iterations: int, prior_weight: float) -> str:
    return f"doodl {iterations} it" + (f" + prior {prior_weight:g}" if prior_weight else "")


@torch.no_grad()
def metrics(outcome: Outcome, labels: torch.Tensor, guide: ClassifierGuidance, judge: ClassifierGuidance,
            train_x: torch.Tensor, tau: float) -> dict[str, float]:
    """Judge accuracy and target probability, realistic-and-correct rate, guide accuracy, NN distance, time."""
    judge_probs = judge.probabilities(outcome.images)
    judge_correct = judge_probs.argmax(1) == labels
    nn = nearest_train_distance(outcome.images, train_x)
    return {
        "judge_acc": float(judge_correct.float().mean()),
        "judge_prob": float(judge_probs.gather(1, labels[:, None]).mean()),
        "real_correct": float((judge_correct & (nn <= tau)).float().mean()),
        "guide_acc": float((guide.probabilities(outcome.images).argmax(1) == labels).float().mean()),
        "nn_dist": float(nn.mean()),
        "sec_per_image": outcome.sec_per_image,
    }


def table(report: dict) -> str:
    lines = [f"\n{report['setting']}: targets {report['targets']}, {report['seeds']} seeds, {report['steps']} steps; "
             f"real test images' NN distance {report['real_nn_dist']:.3f} (tau = {report['tau']:.3f})", "",
             "| method | judge acc | judge p(target) | realistic & correct | guide acc | NN dist | s / image |",
             "|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | {m['judge_acc']:.2f} | {m['judge_prob']:.2f} | {m['real_correct']:.2f} | "
                     f"{m['guide_acc']:.2f} | {m['nn_dist']:.3f} | {m['sec_per_image']:.3f} |")
    return "\n".join(lines)


def sheet_rows(outcomes: dict[str, Outcome], items: list[Item], targets: list[int]) -> list[tuple[str, list[np.ndarray]]]:
    """Rows = methods, columns = targets (each target's first seed)."""
    first = [next(i for i, item in enumerate(items) if item.target == t) for t in targets]
    return [(name, [(o.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in first])
            for name, o in outcomes.items()]
