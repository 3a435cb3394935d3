"""Seconds per DOODL iteration on a published model's architecture (SD 1.5, SDXL base, SD 3.5 Large, FLUX.1-dev)
at its native size and default step count, built from configs with random weights (compute does not depend on the
weights), plus one guided network forward (CFG: both passes; FLUX: its single guidance-embedded pass) and peak GPU
memory. Meant for a GPU in bf16 (`--device cuda`); `--tiny` runs the same path at toy size on the CPU.

Each model is sized to finish within 8 minutes on one H100/H200: a warm-up iteration, then `--iterations`
timed ones (the difference of two runs, so loading and scoring cancel out)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from doodl_ray.benchmarks.architectures import FAMILIES, build_pipeline
from doodl_ray.config import SamplerConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig

STEPS = {"sd15": 50, "sdxl": 50, "sd3": 28, "flux": 28}  # each pipeline's default
ADAPTER_FAMILY = {"sd15": "sd", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux"}
TINY_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=FAMILIES, default="sd15",
                        help="sd15 (512 px), sdxl (1024 px), sd3 (SD 3.5 Large, 1024 px), flux (FLUX.1-dev, 1024 px)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's pipeline's: 50, 50, 28, 28)")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the model's native size)")
    parser.add_argument("--iterations", type=int, default=2, help="timed DOODL iterations after a warm-up")
    parser.add_argument("--gradient", choices=["checkpoint", "reversible"], default="checkpoint")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="toy-size model: checks the script on a CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def bench_model(name: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The adapter over a random-weight pipeline: network and VAE on the device, text encoders offloaded to the
    CPU between encodes, as `load_diffusion` leaves a loaded model."""
    from diffusers.utils import logging

    from doodl_ray.models.families import FAMILIES

    logging.set_verbosity_error()  # casting random weights: no advice on keeping modules in float32
    pipe = build_pipeline(name, tiny, device)
    pipe.to(dtype=dtype)
    model = FAMILIES[ADAPTER_FAMILY[name]].adapter_class().from_pipeline(pipe).to(device)
    for encoder in model.text_encoders:
        if encoder is not None:
            encoder.to("cpu")
    return model


def run(args: argparse.Namespace) -> int:
    import torchvision

    from doodl_ray.engine import Engine, Item
    from doodl_ray.guidance.classifier import ClassifierGuidance
    from doodl_ray.guidance.crops import MultiCrop
    from doodl_ray.guidance.preprocess import Preprocess

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = bench_model(args.model, args.tiny, device, dtype)
    steps = args.steps or STEPS[args.model]
    size = args.size or (TINY_SIZE if args.tiny else None)
    classifier = torchvision.models.resnet50(weights=None).to(device)
    preprocess = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    guide = ClassifierGuidance(classifier, 1000, preprocess, crops=MultiCrop(args.crops)).to(device)
    item = Item(id="bench", seed=0, prompt="a photograph of an astronaut riding a horse", target=1)
    sampler = SamplerConfig(steps=steps, height=size, width=size)

    def run_doodl(iterations: int) -> float:
        method = MethodConfig(name="doodl", sampler=sampler, doodl=DoodlConfig(iterations=iterations,
                                                                                gradient=args.gradient))
        engine = Engine(model, guide, method, device=device, dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        engine.run([engine.validate(item)])
        _sync(device)
        return time.perf_counter() - start

    engine = Engine(model, guide, MethodConfig(name="none", sampler=sampler), device=device, dtype=dtype)
    eps = model.condition([item.prompt], None, sampler.cfg_scale)
    schedule = engine.schedule
    noise = engine.problem([item]).noise
    with torch.no_grad():
        for _ in range(2):
            eps(noise, schedule.timesteps[0])
        _sync(device)
        start = time.perf_counter()
        for k in range(5):
            eps(noise, schedule.timesteps[k % len(schedule)])
        _sync(device)
    guided_forward = (time.perf_counter() - start) / 5
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = run_doodl(1)
    timed = run_doodl(1 + args.iterations)
    _, height, width = engine.image_shape
    result = {
        "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "size": [height, width], "steps": steps, "passes": model.passes(sampler.cfg_scale),
        "cfg_scale": model.cfg(sampler.cfg_scale), "gradient": args.gradient, "tiny": args.tiny,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "sec_per_iteration": (timed - warm) / args.iterations,
        "sec_per_guided_forward": guided_forward,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(f"{args.model} on {result['device']} {args.dtype}, {height}x{width}, {steps} steps, "
          f"{result['passes']} pass(es) per step: {result['sec_per_iteration']:.2f} s per DOODL iteration "
          f"({args.gradient}), {guided_forward * 1000:.1f} ms per guided forward, peak {result['peak_gpu_gb'] or 0:.1f} GB")
    if args.json:
        print(json.dumps(result))
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
