"""Train the whole digits model set from one seed and write it in the shipped layout:

    OUT/balanced/  DDIM pipeline trained on the full training split
    OUT/rare/      the same, trained with the rare classes (RARE_CLASSES unless told) cut to RARE_KEEP images each
    OUT/guide.pt   TorchScript guide classifier (what DOODL optimizes against)
    OUT/judge.pt   TorchScript judge classifier (evaluation only, never used for guidance)
    OUT/metrics.json

The classifiers are trained once, on the balanced split, and serve both diffusion models: the rare
setting only changes what the diffusion model saw. Usage:
    python -m doodl_ray.digits.train --out DIR --seed 0 [--rare-classes 3 5 8] [--toy]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import diffusers
from diffusers import UNet2DModel
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doodl_ray.digits import diffusion
from doodl_ray.digits.augment import random_affine
from doodl_ray.digits.classifiers import GuideCNN, JudgeMixer, normalize, save_torchscript
from doodl_ray.digits.data import NUM_CLASSES, RARE_CLASSES, RARE_KEEP, SPLIT_SEED, load_split, rare_subset, to_unit_range


@dataclass(frozen=True)
class Settings:
    unet_steps: int = 2500
    unet_batch: int = 64
    unet_lr: float = 2e-3
    unet_ema: float = 0.999
    # No shift augmentation for the diffusion models: shifted digits are far (in pixels) from every training
    # image, and a model taught to make them scored 0.30 within the real-image NN distance (tau) after
    # 4000 steps, against 0.94 without shifts (128 DDIM samples each, 2026-11-26).
    unet_shift: int = 0
    guide_epochs: int = 30
    judge_epochs: int = 60
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    check_samples: int = 256  # DDIM samples per diffusion model, classified by the judge
    check_steps: int = 50


TOY = Settings(unet_steps=4, unet_batch=8, guide_epochs=1, judge_epochs=1, check_samples=8, check_steps=4)


def train_classifier(
    model: nn.Module, images01: Tensor, labels: Tensor, epochs: int, batch: int, lr: float, seed: int,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    adversary: Callable[[Tensor, Tensor, torch.Generator], Tensor] | None = None,
) -> nn.Module:  # fmt: skip
    """Cross-entropy with AdamW and a cosine learning rate, on augmented, normalized images; with an adversary
    (digits.robust), on its perturbation of each augmented batch."""
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(images01) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images01), generator=gen).split(batch):
            x = augment(images01[idx], gen)
            if adversary is not None:
                x = adversary(x, labels[idx], gen)
            loss = F.cross_entropy(model(normalize(x)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images01: Tensor) -> Tensor:
    """[N, 10] probabilities of [0, 1] images."""
    return model(normalize(images01)).softmax(dim=-1)


def guide_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_affine(x, gen, translate=0.1, zoom=0.5)  # covers DOODL's multi-crop views


def _judge_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_affine(x, gen, degrees=10.0, translate=1.0 / 16)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(out: Path, seed: int, settings: Settings, rare_classes: tuple[int, ...] = RARE_CLASSES) -> dict:
    """Train everything into `out`; returns the metrics also written to out/metrics.json (whose
    `data.rare_classes` tells the benchmarks which classes the rare model barely saw)."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = load_split()
    rare_x, rare_y = rare_subset(train_x, train_y, tuple(rare_classes))
    metrics: dict = {
        "seed": seed,
        "settings": asdict(settings),
        "data": {
            "source": "sklearn.datasets.load_digits, bilinear 8x8 -> 16x16",
            "split_seed": SPLIT_SEED,
            "train": len(train_y),
            "test": len(test_y),
            "rare_classes": list(rare_classes),
            "rare_keep_per_class": RARE_KEEP,
            "rare_train": len(rare_y),
        },
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    }

    specs = {"guide": (GuideCNN, seed, settings.guide_epochs, guide_augment),
             "judge": (JudgeMixer, seed + 1, settings.judge_epochs, _judge_augment)}  # fmt: skip
    trained: dict[str, nn.Module] = {}
    for name, (architecture, model_seed, epochs, augment) in specs.items():
        t0 = time.perf_counter()
        torch.manual_seed(model_seed)  # initialization draws from the global generator
        model = architecture()
        train_classifier(model, train_x, train_y, epochs, settings.classifier_batch, settings.classifier_lr, model_seed, augment)
        accuracy = (predict(model, test_x).argmax(1) == test_y).float().mean().item()
        save_torchscript(model, out / f"{name}.pt")
        trained[name] = model
        metrics[name] = {"architecture": architecture.__name__, "params": _params(model), "seed": model_seed,
                         "test_accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    judge = trained["judge"]

    datasets = {"balanced": train_x, "rare": rare_x}
    unet_seeds = {name: seed + 2 + offset for offset, name in enumerate(datasets)}
    trainings = _train_unets_in_parallel(datasets, settings, unet_seeds)
    for name, images in datasets.items():
        unet, train_loss, seconds = trainings[name]
        unet = diffusion.save_pipeline(unet, out / name)
        samples = to_unit_range(
            diffusion.ddim_sample(unet, diffusion.make_scheduler(), settings.check_samples, settings.check_steps, seed)
        )
        probs = predict(judge, samples)
        metrics[name] = {
            "params": _params(unet),
            "seed": unet_seeds[name],
            "train_images": len(images),
            "train_loss": round(train_loss, 5),
            "test_eps_mse": round(diffusion.eps_mse(unet, test_x, seed), 5),
            "seconds": round(seconds, 1),
            "samples": {
                "count": settings.check_samples,
                "ddim_steps": settings.check_steps,
                "judge_histogram": torch.bincount(probs.argmax(1), minlength=NUM_CLASSES).tolist(),
                "judge_mean_confidence": round(probs.max(1).values.mean().item(), 4),
                "judge_confident_fraction": round((probs.max(1).values > 0.9).float().mean().item(), 4),
            },
        }
    metrics["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _train_unets_in_parallel(datasets: dict[str, Tensor], settings: Settings, seeds: dict[str, int]) -> dict[str, tuple]:
    """One process per diffusion model, one torch thread each: both cores busy, and each result is the
    same as a sequential single-thread run (bitwise), so training stays reproducible from the seed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(datasets), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_unet_timed, images, settings, seeds[name]) for name, images in datasets.items()}
        results = {name: future.result() for name, future in futures.items()}
    trained = {}
    for name, (state, loss, seconds) in results.items():
        unet = UNet2DModel(**diffusion.UNET_CONFIG)
        unet.load_state_dict(state)
        trained[name] = (unet.eval(), loss, seconds)
    return trained


def _train_unet_timed(images: Tensor, settings: Settings, unet_seed: int) -> tuple:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    unet, loss = diffusion.train_unet(images, settings.unet_steps, settings.unet_batch, settings.unet_lr,
                                      settings.unet_ema, unet_seed, max_shift=settings.unet_shift)
    state = {key: value.detach().clone() for key, value in unet.state_dict().items()}  # picklable
    return state, loss, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m doodl_ray.digits.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data split is fixed)")
    parser.add_argument("--rare-classes", type=int, nargs="+", default=list(RARE_CLASSES),
                        help="classes the rare-class model sees only RARE_KEEP times")
    parser.add_argument("--toy", action="store_true", help="a few steps of everything, for tests")
    parser.add_argument("--unet-steps", type=int, help="override the UNet optimizer steps")
    args = parser.parse_args(argv)
    settings = TOY if args.toy else Settings()
    if args.unet_steps is not None:
        settings = replace(settings, unet_steps=args.unet_steps)
    metrics = run(args.out, args.seed, settings, tuple(args.rare_classes))
    print(json.dumps({k: metrics[k] for k in ("guide", "judge", "total_seconds")}))


if __name__ == "__main__":
    main()
