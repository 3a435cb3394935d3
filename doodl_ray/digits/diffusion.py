"""The digits pixel diffusion model: an unconditional 16x16 UNet2DModel with a DDIM scheduler, trained
on epsilon with EMA weights, plus a plain DDIM sampler for checks. Saved as a diffusers DDIMPipeline
folder, so `doodl_ray.models.load_denoiser` loads it like any hub model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from torch import Tensor

from doodl_ray.digits.augment import random_shift
from doodl_ray.digits.data import SIZE, to_model_range

# squaredcos_cap_v2 (the "improved DDPM" cosine schedule): at 16x16 a linear schedule destroys most
# of the signal in the first third of the timesteps, wasting them; the cosine one spreads the noise
# levels evenly. set_alpha_to_one=True makes DDIM's last step land exactly on the clean image.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    clip_sample=False,
    prediction_type="epsilon",
    set_alpha_to_one=True,
    steps_offset=0,
    timestep_spacing="leading",
)
UNET_CONFIG = dict(
    sample_size=SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    # 8 groups, not the default 32: one channel per group in the 32-wide level acts as instance norm, and
    # then a third of the samples end in saturated noise after a short training run; 8 groups fixes it.
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
)


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)


def train_unet(
    images01: Tensor, steps: int, batch: int, lr: float, ema_decay: float, seed: int, max_shift: int = 1
) -> tuple[UNet2DModel, float]:
    """Train from scratch on epsilon MSE; returns the EMA model (better samples than the raw weights
    after a short run) and the mean training loss over the last 10% of steps."""
    torch.manual_seed(seed)  # the UNet's initialization draws from the global generator
    unet = UNet2DModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = make_scheduler()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    tail: list[float] = []
    unet.train()
    for step in range(steps):
        idx = torch.randint(0, len(images01), (batch,), generator=gen)
        x0 = to_model_range(random_shift(images01[idx], max_shift, gen))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1.0 - decay)
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    return ema.eval(), sum(tail) / len(tail)


@torch.no_grad()
def eps_mse(unet: UNet2DModel, images01: Tensor, seed: int, batch: int = 256) -> float:
    """Epsilon MSE on held-out images at seeded noise and timesteps: a cheap, comparable fit measure."""
    scheduler = make_scheduler()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(images01), batch):
        x0 = to_model_range(images01[start : start + batch])
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        total += F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise, reduction="sum").item()
    return total / images01.numel()


@torch.no_grad()
def ddim_sample(unet: UNet2DModel, scheduler: DDIMScheduler, count: int, steps: int, seed: int, batch: int = 256) -> Tensor:
    """Plain deterministic DDIM (eta = 0) from seeded noise; [count, 1, 16, 16] in [-1, 1]."""
    scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, SIZE, SIZE, generator=gen)
    out = []
    for chunk in x.split(batch):
        for t in scheduler.timesteps:
            chunk = scheduler.step(unet(chunk, t).sample, t, chunk, eta=0.0).prev_sample
        out.append(chunk)
    return torch.cat(out)


def save_pipeline(unet: UNet2DModel, path: str | Path) -> UNet2DModel:
    """Write a DDIMPipeline folder (model_index.json, unet/, scheduler/), weights as float16 safetensors
    (half the size; `from_pretrained` upcasts to float32 unless asked otherwise), and return the UNet
    read back from it, so every later measurement is of exactly the shipped weights."""
    half = copy.deepcopy(unet).half()  # .half(), not .to(): diffusers' .to() warns on dtype casts
    DDIMPipeline(unet=half, scheduler=make_scheduler()).save_pretrained(str(path), safe_serialization=True)
    return UNet2DModel.from_pretrained(Path(path) / "unet", use_safetensors=True).float().eval()
