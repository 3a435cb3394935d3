"""The sequential Monte Carlo baselines against straightforward implementations of their published algorithms,
on the shipped balanced digits model and guide, from the same noise: resampling schemes against the `particles`
library's formulas, FK steering with the classical-search strengthening (systematic resampling, a rising
temperature, the max potential), and DAS (twisted proposals, tempering, importance weights, SSP)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doodl_ray.config import SamplerConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.das import DasConfig
from doodl_ray.methods.specs.particles import ParticleConfig
from doodl_ray.digits import ASSETS_DIR
from doodl_ray.engine import Engine, Item
from doodl_ray.guidance.classifier import load_torchscript_classifier
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.methods.base import candidate_seed
from doodl_ray.methods.resampling import resample

STEPS = 8
NOISE_SALT = 0x5DEECE66D  # each particle slot's step-noise stream (methods/particles.py, methods/das.py)


def _inverse_cdf(su: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The `particles` library's loop (as DAS ships it in das/smc_utils.py)."""
    j, s, out = 0, w[0], np.empty(len(su), dtype=np.int64)
    for n in range(len(su)):
        while su[n] > s:
            if j == len(su) - 1:
                break
            j += 1
            s += w[j]
        out[n] = j
    return out


def _ssp(w: np.ndarray, m: int, u: np.ndarray) -> np.ndarray:
    """The `particles` library's SSP, with its uniforms given."""
    n = w.shape[0]
    mw = m * w
    children = np.floor(mw).astype(np.int64)
    xi = mw - children
    i, j = 0, 1
    for k in range(n - 1):
        delta_i, delta_j = min(xi[j], 1.0 - xi[i]), min(xi[i], 1.0 - xi[j])
        total = delta_i + delta_j
        pj = delta_i / total if total > 0.0 else 0.0
        if u[k] < pj:
            j, i = i, j
            delta_i = delta_j
        if xi[j] < 1.0 - xi[i]:
            xi[i] += delta_i
            j = k + 2
        else:
            xi[j] -= delta_i
            children[i] += 1
            i = k + 2
    if np.sum(children) == m - 1:
        last = i if j == k + 2 else j
        if xi[last] > 0.99:
            children[last] += 1
    return np.arange(n).repeat(children)


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "ssp"])
def test_resampling_schemes_are_the_particles_librarys(scheme):
    log_w = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    ours = resample(log_w, scheme, [torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        w = torch.softmax(log_w[i], 0).numpy()
        gen = torch.Generator().manual_seed(i)
        if scheme == "ssp":
            expected = _ssp(w, 7, torch.rand(6, generator=gen, dtype=torch.float64).numpy())
        else:
            u = torch.rand(1 if scheme == "systematic" else 7, generator=gen, dtype=torch.float64).numpy()
            expected = _inverse_cdf((u + np.arange(7)) / 7, w)
        assert (ours[i * 7 : (i + 1) * 7].numpy() - i * 7).tolist() == expected.tolist()


def test_low_variance_schemes_give_each_particle_floor_or_ceil_of_its_expected_children():
    log_w = torch.log(torch.tensor([[0.05, 0.3, 0.15, 0.5]], dtype=torch.float64))
    for scheme in ("systematic", "ssp"):
        for seed in range(20):
            counts = torch.bincount(resample(log_w, scheme, [torch.Generator().manual_seed(seed)]), minlength=4)
            expected = 4 * torch.softmax(log_w[0], 0)
            assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all(), (scheme, counts)


@pytest.fixture(scope="module")
def digits():
    from diffusers import DDIMPipeline

    guide = load_torchscript_classifier(str(ASSETS_DIR / "guide.pt"), crops=MultiCrop(count=0))
    pipe = DDIMPipeline.from_pretrained(str(ASSETS_DIR / "balanced"))
    pipe.scheduler.set_timesteps(STEPS)
    return guide, pipe


def _ours(guide, method, items):
    engine = Engine(str(ASSETS_DIR / "balanced"), guide, method)
    return engine.run([engine.validate(item) for item in items])


def _start(item: Item, k: int):
    """What the engine draws for an item: its own noise first from its generator (which then serves resampling),
    each particle's initial noise from its candidate seed, each slot's step noise from its own stream."""
    own = torch.Generator().manual_seed(item.seed)
    torch.randn(1, 16, 16, generator=own)
    seeds = [candidate_seed(item.seed, j) for j in range(k)]
    x = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return own, x, [torch.Generator().manual_seed(s ^ NOISE_SALT) for s in seeds]


def _log_p_target(guide, pipe, x, t, target):
    """(ε, x̂0, log p(target | decode(x̂0))) of latents x at timestep t."""
    eps = pipe.unet(x, t).sample
    abar = pipe.scheduler.alphas_cumprod[t]
    x0 = (x - (1 - abar) ** 0.5 * eps) / abar**0.5
    logits = guide.model((((x0 + 1) / 2).clamp(0, 1) - 0.5) / 0.5)
    return eps, x0, F.log_softmax(logits, dim=1)[:, target]


def _pixels(latents: torch.Tensor) -> np.ndarray:
    return ((latents + 1) / 2).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).numpy().astype(int)


def test_strengthened_fk_matches_a_straightforward_implementation(digits):
    """FK steering with the max potential exp(λ_k max_s r_s), λ_k = λ min(1, (1 + γ)^k − 1), systematic
    resampling every 2 steps on DDIM η = 1, the final particle with the lowest cross-entropy."""
    guide, pipe = digits
    k, lam, gamma, interval = 5, 3.0, 0.3, 2
    config = ParticleConfig(count=k, temperature=lam, tempering=gamma, potential="max", resampling="systematic",
                            interval=interval)
    items = [Item(id=str(t), seed=300 + t, target=t) for t in (1, 8)]
    ours = _ours(guide, MethodConfig(name="particles", particles=config, sampler=SamplerConfig(steps=STEPS)), items)
    scheduler = pipe.scheduler
    for item, result in zip(items, ours):
        own, x, noise = _start(item, k)
        best_reward = torch.full((k,), -math.inf, dtype=torch.float64)
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                eps, x0, reward = _log_p_target(guide, pipe, x, t, item.target)
                if (i + 1) % interval == 0 and i < STEPS - 1:
                    best_reward = torch.maximum(best_reward, reward.double())
                    weights = torch.softmax(lam * min(1.0, (1 + gamma) ** (i + 1) - 1) * best_reward, 0)
                    u = torch.rand(1, generator=own, dtype=torch.float64)
                    a = torch.tensor(_inverse_cdf(((u + torch.arange(k)) / k).numpy(), weights.numpy()))
                    x, eps, best_reward = x[a], eps[a], best_reward[a]
                xi = torch.stack([torch.randn(1, 16, 16, generator=g) for g in noise])
                x = scheduler.step(eps, t, x, eta=1.0, variance_noise=xi).prev_sample
            final = F.cross_entropy(guide.model((((x + 1) / 2).clamp(0, 1) - 0.5) / 0.5),
                                    torch.full((k,), item.target), reduction="none")
        expected = _pixels(x[final.argmin()][None])[0]
        assert np.abs(result.image.astype(int) - expected).max() <= 1


def test_das_matches_a_straightforward_implementation(digits):
    """DAS as its pseudo-code reads: r = log p(target | x̂0); ψ_i = λ_i r/α, λ_i = min(1, (1 + γ)^i − 1); the DDIM
    η = 1 step x' = μ + σ ξ (diffusers' own step) shifted by σ² λ_{i+1} ∇r/α; log w += log N(x'; μ, σ²) −
    log N(x'; μ + σ² g, σ²) + ψ_{i+1} − ψ_i; SSP resampling below ESS K/2 (everything re-indexed); the final
    weight from the final image's reward; the particle of largest weight."""
    guide, pipe = digits
    k, alpha, gamma = 6, 0.5, 0.4
    method = MethodConfig(name="das", das=DasConfig(count=k, kl=alpha, tempering=gamma), sampler=SamplerConfig(steps=STEPS))
    items = [Item(id=str(t), seed=400 + t, target=t) for t in (2, 9)]
    ours = _ours(guide, method, items)
    scheduler, resampled = pipe.scheduler, 0
    for item, result in zip(items, ours):
        own, x, noise = _start(item, k)
        log_w = torch.zeros(k, dtype=torch.float64)
        twist_prev = torch.zeros(k, dtype=torch.float64)
        log_p = log_q = torch.zeros(k, dtype=torch.float64)
        for i, t in enumerate(scheduler.timesteps):
            x = x.detach().requires_grad_(True)
            eps, _, reward = _log_p_target(guide, pipe, x, t, item.target)
            (grad,) = torch.autograd.grad(reward.sum(), x)
            twist = min(1.0, (1 + gamma) ** i - 1) * reward.detach().double() / alpha
            grad = min(1.0, (1 + gamma) ** (i + 1) - 1) * grad / alpha
            log_w += log_p - log_q + twist - twist_prev
            weights = torch.softmax(log_w, 0)
            if 1 / weights.pow(2).sum() < 0.5 * k:
                u = torch.rand(k - 1, generator=own, dtype=torch.float64).numpy()
                a = torch.tensor(_ssp(weights.numpy(), k, u))
                x, eps, grad, twist, log_w = x[a], eps[a], grad[a], twist[a], torch.zeros(k, dtype=torch.float64)
                resampled += 1
            prev = t - scheduler.config.num_train_timesteps // STEPS
            variance = float(scheduler._get_variance(t, prev))
            xi = torch.stack([torch.randn(1, 16, 16, generator=g) for g in noise])
            stepped = scheduler.step(eps.detach(), t, x.detach(), eta=1.0, variance_noise=xi).prev_sample
            mean = stepped - variance**0.5 * xi
            x = stepped + variance * grad
            if variance > 0:
                log_p = (-(x - mean).pow(2).flatten(1).sum(1) / (2 * variance)).double()
                log_q = (-(x - mean - variance * grad).pow(2).flatten(1).sum(1) / (2 * variance)).double()
            else:
                log_p = log_q = torch.zeros(k, dtype=torch.float64)
            twist_prev = twist
        with torch.no_grad():
            logits = guide.model((((x + 1) / 2).clamp(0, 1) - 0.5) / 0.5)
            log_w += log_p - log_q + F.log_softmax(logits, 1)[:, item.target].double() / alpha - twist_prev
        expected = _pixels(x.detach()[log_w.argmax()][None])[0]
        assert np.abs(result.image.astype(int) - expected).max() <= 1
    assert resampled > 0  # the weights really moved


@pytest.mark.parametrize("method", [
    dict(name="particles", particles=dict(count=5, interval=2, resampling="systematic"), prior=dict(selection=10.0)),
    dict(name="das", das=dict(count=5, kl=0.5, tempering=0.4, select="medoid")),
    dict(name="lookahead", lookahead=dict(count=5, kl=0.5, tempering=0.4, steps=3, until=0.5)),
    dict(name="search-refine", budget=24 * STEPS, search=dict(candidates=7), doodl=dict(iterations=1)),
])
def test_micro_batches_change_memory_not_results(digits, method):
    """A run whose network calls take 3 rows at a time (slices that cut across items) makes the images, scores,
    choices and compute counts of the run that takes every row at once."""
    guide, _ = digits
    items = [Item(id=str(t), seed=500 + t, target=t) for t in (4, 6)]
    config = MethodConfig.model_validate(method | dict(sampler=dict(steps=STEPS)))
    whole, sliced = (Engine(str(ASSETS_DIR / "balanced"), guide, config, micro_batch=size) for size in (None, 3))
    calls = {whole: [], sliced: []}
    for engine, sizes in calls.items():
        engine.diffusion.unet.register_forward_pre_hook(lambda _, args, sizes=sizes: sizes.append(len(args[0])))
    runs = [engine.run([engine.validate(item) for item in items]) for engine in (whole, sliced)]
    assert max(calls[sliced]) == 3 < max(calls[whole])
    for a, b in zip(*runs):
        assert np.array_equal(a.image, b.image)
        assert a.compute == b.compute and a.best_iteration == b.best_iteration
        # batched kernels may round differently at another batch shape (search-refine's DOODL iterates: ~1e-6)
        assert np.allclose(a.history, b.history, rtol=1e-4, atol=1e-5)
        assert a.final_loss == pytest.approx(b.final_loss, rel=1e-4, abs=1e-5)
