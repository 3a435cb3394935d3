"""Peak memory, network evaluations and time per DOODL gradient, 10/25/50 steps: through the single chain
(`chain`: plain autograd, checkpoint) and through EDICT's coupled chains (`edict`: plain autograd, checkpoint,
reversible).

Each configuration runs in a fresh process, on a pixel UNet whose activations dominate its weights, as two
models: a noise predictor sampled by DDIM (`ddim`) and a velocity predictor sampled by Euler steps of the flow ODE
at SD 3's shifted levels (`flow`, the coupled flow sampler of `sampling/flow.py`).
CPU peak memory is the process's peak RSS above its RSS just before the gradient; on CUDA it is
torch's peak allocated memory. Time per gradient is the fastest over `rounds` fresh processes per
configuration (interleaved) of `repeats` gradients each: robust to a busy or noisy machine. Also prints each model's coupled round-trip error at 50 steps in float64 and float32."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

MODES = ["chain autograd", "chain checkpoint", "edict autograd", "edict checkpoint", "edict reversible"]
REFERENCE = "edict checkpoint"  # what DOODL paid before the single chain
MODELS = ["ddim", "flow"]
FLOW_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--size", type=int, default=32, help="image side of the benchmark UNet")
    parser.add_argument("--repeats", type=int, default=3, help="timed gradients after the first (min is reported)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per configuration, interleaved")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "MODE", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, metavar="MODE",
                        help=f"sampler and gradient pairs, quoted (default: all of {MODES})")


def bench_model(size: int, device: str, dtype: torch.dtype, kind: str = "ddim"):
    """A 3-channel pixel UNet (~0.3M parameters, random weights, fixed seed) whose activations, like a real
    UNet's, are far larger than its latents and its weights: per-step stored latents stay negligible. `kind`
    "flow" reads its output as a velocity (the schedule, steps and inverse of a flow model)."""
    from diffusers import UNet2DModel

    from doodl_ray.models.load import DEFAULT_PIXEL_SCHEDULER
    from doodl_ray.models.pixel import PixelDiffusion, PixelFlowDiffusion

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    if kind == "flow":
        return PixelFlowDiffusion(unet.to(device, dtype), FLOW_SCHEDULER)
    return PixelDiffusion(unet.to(device, dtype), DEFAULT_PIXEL_SCHEDULER)


def worker(kind: str, mode: str, steps: int, args: argparse.Namespace) -> dict:
    """One configuration (`mode` = "SAMPLER GRADIENT"): the first gradient sets the memory peak and counts the
    network evaluations, the next `repeats` are timed."""
    from doodl_ray.sampling.gradient import chain_gradient

    sampler, gradient = mode.split()
    model = bench_model(args.size, args.device, torch.float32, kind)
    network = model.condition(None, None, None)
    calls = {"forward": 0, "vjp": 0}

    def eps(z, t):
        calls["forward"] += 1
        out = network(z, t)
        return _CountVjp.apply(out, calls) if out.requires_grad else out

    schedule = model.schedule(steps, (3, args.size, args.size))
    z = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(args.device)
    target = torch.rand(z.shape, generator=torch.Generator().manual_seed(1)).to(args.device)

    def chain_loss(z0):
        image = ((z0 + 1) / 2).clamp(0, 1)
        return (image - target).pow(2).flatten(1).mean(1), image

    baseline = _current_memory(args.device)  # before any forward: allocator caches count as working memory
    chain_gradient(z, schedule, eps, chain_loss, 0.93, True, gradient, sampler)
    peak = _peak_memory(args.device) - baseline
    evaluations = calls["forward"] + calls["vjp"]
    times = []
    for _ in range(args.repeats):
        _sync(args.device)
        start = time.perf_counter()
        chain_gradient(z, schedule, eps, chain_loss, 0.93, True, gradient, sampler)
        _sync(args.device)
        times.append(time.perf_counter() - start)
    return {"peak_mb": peak / 2**20, "sec_per_grad": min(times), "evals_per_grad": evaluations}


class _CountVjp(torch.autograd.Function):
    """Identity that counts one VJP through the network call that produced its input."""

    @staticmethod
    def forward(ctx, x, calls):  # type: ignore[override]
        ctx.calls = calls
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        ctx.calls["vjp"] += 1
        return grad, None


def roundtrip_errors(args: argparse.Namespace, kind: str, steps: int = 50) -> dict[str, float]:
    """Relative error of invert(sample(z)) against z, in float64 and float32."""
    from doodl_ray.sampling.edict import edict_invert, edict_sample

    errors = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        model = bench_model(args.size, args.device, dtype, kind)
        eps, schedule = model.condition(None, None, None), model.schedule(steps, (3, args.size, args.size))
        z = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0), dtype=dtype)
        z = z.to(args.device)
        with torch.no_grad():
            x, y = edict_sample(z, z, schedule, eps, 0.93)
            xr, yr = edict_invert(x, y, schedule, eps, 0.93)
        errors[name] = float(max((xr - z).norm(), (yr - z).norm()) / z.norm())
    return errors


def run(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]), args)))
        return 0
    best: dict[tuple[str, str, int], dict] = {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    keys = ("peak_mb", "sec_per_grad", "evals_per_grad")
    for round_ in range(args.rounds):
        for kind in args.models:
            for steps in args.steps:
                for mode in args.modes:
                    cmd = [sys.executable, "-m", "doodl_ray.cli", "bench", "grad", "--worker", kind, mode, str(steps),
                           "--size", str(args.size), "--repeats", str(args.repeats), "--device", args.device]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                    measured = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"round {round_} {kind:4s} steps {steps:3d} {mode:18s} peak {measured['peak_mb']:8.1f} MB  "
                          f"{measured['sec_per_grad']:7.3f} s/grad  {measured['evals_per_grad']:4d} evaluations",
                          flush=True)
                    previous = best.get((kind, mode, steps))
                    best[(kind, mode, steps)] = {key: min(measured[key], previous[key]) if previous else measured[key]
                                                 for key in keys}
    results = {"steps": args.steps, "modes": args.modes, "models": {
        kind: {**{key: {m: [best[(kind, m, s)][key] for s in args.steps] for m in args.modes} for key in keys},
               "roundtrip_rel_err": roundtrip_errors(args, kind)}
        for kind in args.models}}
    print(_table(results))
    if args.json:
        print(json.dumps(results))
    return 0


def _table(r: dict) -> str:
    """Per model and mode: peak memory and its growth from the fewest to the most steps, network evaluations per
    gradient, and time per gradient against plain autograd through the same sampler and against EDICT's
    checkpointed gradient (what DOODL paid before the single chain)."""
    steps = r["steps"]
    first, last = 0, len(steps) - 1
    lines = ["", "| model | sampler, gradient | " + " | ".join(f"peak MB @{s}" for s in steps)
             + f" | peak @{steps[last]} / @{steps[first]} | " + " | ".join(f"evals @{s}" for s in steps) + " | "
             + " | ".join(f"time / autograd @{s}" for s in steps) + " | "
             + " | ".join(f"time / {REFERENCE} @{s}" for s in steps) + " |",
             "|---" * (4 * len(steps) + 3) + "|"]
    for kind, m in r["models"].items():
        for mode in r["modes"]:
            peaks, times, evals = m["peak_mb"][mode], m["sec_per_grad"][mode], m["evals_per_grad"][mode]
            ratio = peaks[last] / peaks[first] if peaks[first] > 0 else float("nan")
            plain = m["sec_per_grad"].get(f"{mode.split()[0]} autograd")
            reference = m["sec_per_grad"].get(REFERENCE)
            rel = [f"{t / a:.2f}" if plain else "" for t, a in zip(times, plain or times)]
            ref = [f"{t / e:.2f}" if reference else "" for t, e in zip(times, reference or times)]
            lines.append(f"| {kind} | {mode} | " + " | ".join(f"{p:.1f}" for p in peaks) + f" | {ratio:.2f} | "
                         + " | ".join(str(e) for e in evals) + " | " + " | ".join(rel) + " | " + " | ".join(ref) + " |")
    for kind, m in r["models"].items():
        err = m["roundtrip_rel_err"]
        lines.append(f"\n{kind}: coupled round trip, 50 steps, relative error: float64 {err['float64']:.2e}, "
                     f"float32 {err['float32']:.2e}")
    return "\n".join(lines)


def _current_memory(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
