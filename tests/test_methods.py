"""Every method through the registry: compute counted exactly (against hand counts), budgets kept, per-item
early stop, batch independence, and the one-step baseline against a straightforward diffusers loop."""

import math

import numpy as np
import pytest
import torch

from doodl_ray.config import SamplerConfig, StopConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.das import DasConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.methods.specs.lookahead import LookaheadConfig
from doodl_ray.methods.specs.noise_mcmc import NoiseMcmcConfig
from doodl_ray.methods.specs.particles import ParticleConfig
from doodl_ray.methods.specs.search_refine import SearchConfig
from doodl_ray.engine import Engine, Item
from doodl_ray.guidance.classifier import load_torchscript_classifier
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.methods import METHODS

STEPS = 3


def _method(name, **kw):
    kw.setdefault("doodl", DoodlConfig(iterations=2, optimizer="normalized", lr=0.3))
    return MethodConfig(name=name, sampler=SamplerConfig(steps=STEPS, cfg_scale=3.0), **kw)


def _run(model, classifier, method, items):
    engine = Engine(model, load_torchscript_classifier(classifier), method)
    return engine.run([engine.validate(item) for item in items])


ITEMS = [Item(id="a", seed=5, target=1), Item(id="b", seed=6, target=4)]


def test_every_built_in_method_names_an_importable_function():
    import importlib

    for name, plugin in METHODS.items():
        assert plugin.name == name
        if isinstance(plugin.function, str):  # built-ins: imported when first run, so the registry needs no torch
            module, _, attribute = plugin.function.partition(":")
            assert callable(getattr(importlib.import_module(module), attribute))


@pytest.mark.parametrize("name,expected", [
    # DOODL, 2 iterations: 3 forward EDICT passes (2 evaluations per step) + 2 backward passes (2 VJPs per step, and
    # 2 recomputed evaluations per step but the last, whose graph the forward pass kept); each iterate decoded and
    # scored once, each backward decodes and scores both chains (a pixel model's decode is the identity:
    # checkpointing has nothing to recompute, so no second forward).
    ("doodl", dict(unet_forward=3 * 2 * STEPS + 2 * 2 * (STEPS - 1), unet_vjp=2 * 2 * STEPS, decode_forward=3 + 2 * 2,
                   decode_vjp=2 * 2, guide_forward=3 + 2 * 2, guide_vjp=2 * 2)),
    # The same through the single chain: one evaluation per step forward, one VJP per step and one recomputed
    # evaluation per step but the last backward; one final latent to decode and score.
    ("doodl-chain", dict(unet_forward=3 * STEPS + 2 * (STEPS - 1), unet_vjp=2 * STEPS, decode_forward=3 + 2,
                         decode_vjp=2, guide_forward=3 + 2, guide_vjp=2)),
    # DAS, 4 particles: a forward at every step, a VJP (through network, decoder and guide) at every step with noise
    # (all but the last DDIM step), and the final image decoded and scored.
    ("das", dict(unet_forward=4 * STEPS, unet_vjp=4 * (STEPS - 1), decode_forward=4 * STEPS + 4,
                 decode_vjp=4 * (STEPS - 1), guide_forward=4 * STEPS + 4, guide_vjp=4 * (STEPS - 1))),
    # lookahead, 2 particles, 2-level renders: at each of the first two steps a 2-level render forward and back
    # (its first evaluation is the particle's own step), at the last step one forward; each step's render and the
    # final image decoded and scored.
    ("lookahead", dict(unet_forward=2 * (2 + 2 + 1), unet_vjp=2 * (2 + 2), decode_forward=2 * (STEPS + 1),
                       decode_vjp=2 * 2, guide_forward=2 * (STEPS + 1), guide_vjp=2 * 2)),
    # noise-langevin, 2 chains, 1 move: 4 states per item, each rendered with its gradient (a forward per step,
    # a VJP per step, a recomputed evaluation per step but the last), decoded once, scored twice (the guide's loss
    # and the unaugmented ranking score).
    ("noise-langevin", dict(unet_forward=4 * (2 * STEPS - 1), unet_vjp=4 * STEPS, decode_forward=4, decode_vjp=4,
                            guide_forward=4 * 2, guide_vjp=4)),
    # noise-mcmc: the same states without gradients; with 2-level chain renders, the chosen noise rendered again at
    # the sampler's own steps.
    ("noise-mcmc", dict(unet_forward=4 * 2 + STEPS, unet_vjp=0, decode_forward=4 + 1, decode_vjp=0,
                        guide_forward=4 * 2, guide_vjp=0)),
    ("best-of-n", dict(unet_forward=3 * STEPS, unet_vjp=0, decode_forward=3, decode_vjp=0, guide_forward=3, guide_vjp=0)),
    ("one-step", dict(unet_forward=STEPS, unet_vjp=STEPS, decode_forward=STEPS + 1, decode_vjp=STEPS,
                      guide_forward=STEPS + 1, guide_vjp=STEPS)),
    ("none", dict(unet_forward=STEPS, unet_vjp=0, decode_forward=1, decode_vjp=0, guide_forward=0, guide_vjp=0)),
])
def test_compute_counts_equal_a_hand_count(tiny_pixel, tiny_classifier, name, expected):
    extra = dict(candidates=3) if name == "best-of-n" else {}
    extra |= dict(lookahead=LookaheadConfig(count=2, steps=2), noise_langevin=NoiseMcmcConfig(chains=2, rounds=1, render_steps=None),
                  noise_mcmc=NoiseMcmcConfig(chains=2, rounds=1, render_steps=2))
    if name == "doodl-chain":
        name, extra = "doodl", dict(doodl=DoodlConfig(iterations=2, optimizer="normalized", lr=0.3, sampler="chain"))
    results = _run(tiny_pixel, tiny_classifier, _method(name, **extra), ITEMS)
    for result in results:
        assert result.compute == expected | {"unet_evals": expected["unet_forward"] + expected["unet_vjp"]}


def test_classifier_free_guidance_counts_two_passes(tiny_sd, tiny_classifier):
    items = [Item(id="a", seed=1, prompt="a bird", target=2)]
    (result,) = _run(tiny_sd, tiny_classifier, _method("best-of-n", candidates=2), items)
    assert result.compute["unet_forward"] == 2 * 2 * STEPS


@pytest.mark.parametrize("name", ["doodl", "best-of-n", "one-step", "search-refine", "particles", "das", "lookahead",
                                  "noise-langevin", "noise-mcmc"])
def test_a_budget_is_never_exceeded(tiny_pixel, tiny_classifier, name):
    budget = 40 * STEPS
    method = _method(name, budget=budget, search=SearchConfig(fraction=0.25))
    for result in _run(tiny_pixel, tiny_classifier, method, ITEMS):
        assert budget * 0.5 <= result.compute["unet_evals"] <= budget, result.compute


@pytest.mark.parametrize("name", ["doodl", "best-of-n", "search-refine", "particles", "one-step", "das", "lookahead",
                                  "noise-langevin", "noise-mcmc"])
def test_an_item_gives_the_same_result_alone_or_in_a_batch(tiny_pixel, tiny_classifier, name):
    chains = NoiseMcmcConfig(chains=2, rounds=2, render_steps=2)
    method = _method(name, candidates=3, particles=ParticleConfig(count=3, interval=1), das=DasConfig(count=3),
                     lookahead=LookaheadConfig(count=3, steps=2), noise_langevin=chains, noise_mcmc=chains,
                     search=SearchConfig(candidates=2, starts=2), stop=StopConfig(guide_loss=2.2))
    engine = Engine(tiny_pixel, load_torchscript_classifier(tiny_classifier), method)
    items = [engine.validate(item) for item in ITEMS + [Item(id="c", seed=7, target=8)]]
    together = engine.run(items)
    alone = engine.run(items[1:2])[0]
    assert (together[1].image == alone.image).all()
    assert together[1].history == pytest.approx(alone.history, rel=1e-5)
    assert together[1].compute == alone.compute


def test_early_stop_spends_nothing_more_on_items_that_meet_the_rule(tiny_pixel, tiny_classifier):
    free = _run(tiny_pixel, tiny_classifier, _method("doodl"), ITEMS)
    # a threshold between the two items' unguided losses: the easier item stops at once, the other goes on
    threshold = float(np.mean([r.history[0] for r in free]))
    easy = int(np.argmin([r.history[0] for r in free]))
    stopped = _run(tiny_pixel, tiny_classifier, _method("doodl", stop=StopConfig(guide_loss=threshold)), ITEMS)
    assert stopped[easy].compute["unet_vjp"] == 0 and len(stopped[easy].history) == 1
    other = stopped[1 - easy]
    assert other.compute["unet_vjp"] > 0
    assert other.history == pytest.approx(free[1 - easy].history[: len(other.history)], rel=1e-5)
    assert other.history[-1] <= threshold or len(other.history) == 3


def test_target_probability_stop_is_the_cross_entropy_threshold(tiny_pixel, tiny_classifier):
    by_probability = _run(tiny_pixel, tiny_classifier, _method("doodl", stop=StopConfig(target_probability=0.2)), ITEMS)
    by_loss = _run(tiny_pixel, tiny_classifier, _method("doodl", stop=StopConfig(guide_loss=-math.log(0.2))), ITEMS)
    assert [r.compute for r in by_probability] == [r.compute for r in by_loss]


def test_search_refine_refines_only_what_search_did_not_solve(tiny_pixel, tiny_classifier):
    plain = SearchConfig(candidates=3, prune=False)
    solved = _run(tiny_pixel, tiny_classifier, _method("search-refine", search=plain, stop=StopConfig(guide_loss=100.0)),
                  ITEMS)
    assert all(r.compute["unet_vjp"] == 0 and r.compute["unet_forward"] == STEPS for r in solved)
    refined = _run(tiny_pixel, tiny_classifier, _method("search-refine", search=plain), ITEMS)
    searched = _run(tiny_pixel, tiny_classifier, _method("best-of-n", candidates=3), ITEMS)
    for r, s in zip(refined, searched):
        assert r.compute["unet_vjp"] > 0
        assert r.final_loss <= s.final_loss + 1e-6  # the refinement starts from the search's best
        assert r.history[:3] == pytest.approx(s.history, rel=1e-6)


def test_one_deterministic_particle_is_the_plain_sample(tiny_pixel, tiny_classifier):
    particle = _run(tiny_pixel, tiny_classifier, _method("particles", particles=ParticleConfig(count=1, eta=0.0)), ITEMS)
    plain = _run(tiny_pixel, tiny_classifier, _method("none"), ITEMS)
    for a, b in zip(particle, plain):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_one_step_matches_a_straightforward_diffusers_loop(tiny_classifier):
    """The shipped balanced digits model and guide, guided the way diffusers' CLIP-guided pipeline does it:
    DDIMScheduler.step on eps + s sqrt(1 - abar_t) grad loss(decode(x0_hat)), written here from scratch."""
    from diffusers import DDIMPipeline

    from doodl_ray.digits import ASSETS_DIR

    steps, scale = 10, 0.3
    guide = load_torchscript_classifier(str(ASSETS_DIR / "guide.pt"), crops=MultiCrop(count=0))
    method = MethodConfig(name="one-step", guidance_scale=scale, normalize_gradient=False,
                          sampler=SamplerConfig(steps=steps))
    engine = Engine(str(ASSETS_DIR / "balanced"), guide, method)
    items = [engine.validate(Item(id=str(t), seed=100 + t, target=t)) for t in (3, 7)]
    ours = engine.run(items)

    pipe = DDIMPipeline.from_pretrained(str(ASSETS_DIR / "balanced"))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(i.seed)) for i in items])
    targets = torch.tensor([i.target for i in items])
    for t in scheduler.timesteps:
        latents = latents.detach().requires_grad_(True)
        noise_pred = pipe.unet(latents, t).sample
        beta = 1 - scheduler.alphas_cumprod[t]
        x0 = (latents - beta**0.5 * noise_pred) / scheduler.alphas_cumprod[t] ** 0.5
        logits = guide.model((((x0 + 1) / 2).clamp(0, 1) - 0.5) / 0.5)
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, latents)
        latents = scheduler.step(noise_pred.detach() + scale * beta**0.5 * grad, t, latents.detach()).prev_sample
    reference = ((latents + 1) / 2).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).numpy().astype(int)
    for r, expected in zip(ours, reference):
        assert np.abs(r.image.astype(int) - expected).max() <= 1


def test_a_budget_too_small_for_one_image_is_an_error_before_any_work(tiny_sd, tiny_classifier):
    from pydantic import ValidationError

    from doodl_ray.errors import InvalidInput

    with pytest.raises(ValidationError, match="doodl needs a budget of at least 6 UNet evaluations"):
        _method("doodl", budget=5)  # in the spec already: two EDICT chains of 3 steps
    with pytest.raises(InvalidInput, match="doodl needs a budget of at least 12 UNet evaluations"):
        Engine(tiny_sd, load_torchscript_classifier(tiny_classifier), _method("doodl", budget=8))  # CFG: 2 passes


def test_pruned_search_keeps_each_items_better_half_by_its_one_step_estimate(tiny_pixel, tiny_classifier):
    """Successive halving, checked against doing it by hand: 6 candidates run 2 of 6 steps, the 3 whose decoded
    x0 estimate the guide likes best go on, and so on; the survivors' full samples are ranked at the end."""
    from doodl_ray.methods.base import candidate_seed
    from doodl_ray.methods.pruned_search import checkpoints, pruned_cost, pruned_search, survivors
    from doodl_ray.sampling.chain import chain_step

    steps, count = 6, 6
    assert checkpoints(steps) == [1, 2, 4, 6] and survivors(count, 4) == [6, 3, 2, 1]
    method = MethodConfig(name="search-refine", sampler=SamplerConfig(steps=steps),
                          search=SearchConfig(candidates=count))
    engine = Engine(tiny_pixel, load_torchscript_classifier(tiny_classifier), method)
    items = [engine.validate(item) for item in ITEMS]
    problem = engine.problem(items)
    best, _, ranked = pruned_search(problem, method, None)
    assert [problem.compute.unet(i) for i in range(2)] == [pruned_cost(count, steps, 1)] * 2 == [6 + 3 + 4 + 2] * 2

    schedule, eps = engine.schedule, engine.diffusion.condition(None, None, 1.0)
    for i, item in enumerate(items):
        alive = list(range(count))
        z = problem.draw([candidate_seed(item.seed, j) for j in alive])
        done = 0
        for mark in (1, 2, 4):
            for k in range(done, mark):
                out = eps(z, schedule.timesteps[k])
                x0 = schedule.x0(z, out, k)
                z = chain_step(z, k, schedule, eps)
            done = mark
            losses = engine.guidance.loss(((engine.diffusion.decode(x0) + 1) / 2).clamp(0, 1), [item.target] * len(z), None)
            order = sorted(range(len(alive)), key=lambda r: float(losses[r]))[: (len(alive) + 1) // 2]
            alive, z = [alive[r] for r in sorted(order)], z[sorted(order)]
        assert [j for _, j in ranked[i]] == alive  # one survivor left after three halvings
        assert best.index[i] == alive[0]


def test_search_refine_refining_some_items_reports_every_items_unguided_sample(tiny_pixel, tiny_classifier):
    free = _run(tiny_pixel, tiny_classifier, _method("best-of-n", candidates=1), ITEMS)
    threshold = float(np.mean([r.final_loss for r in free]))  # one item is solved by its search, one is not
    method = _method("search-refine", search=SearchConfig(candidates=2), stop=StopConfig(guide_loss=threshold))
    results = _run(tiny_pixel, tiny_classifier, method, ITEMS)
    assert sorted(r.compute["unet_vjp"] > 0 for r in results) == [False, True]
    assert all(r.initial_image.shape == r.image.shape for r in results)


def test_particles_without_resampling_or_noise_are_best_of_n(tiny_pixel, tiny_classifier):
    """FK steering's bookkeeping against the plainest search: with eta 0 and no resampling step its particles are
    independent DDIM samples from the same candidate noises, so it must pick what best-of-N picks."""
    particles = _run(tiny_pixel, tiny_classifier, _method("particles", particles=ParticleConfig(
        count=4, eta=0.0, interval=1000)), ITEMS)
    search = _run(tiny_pixel, tiny_classifier, _method("best-of-n", candidates=4), ITEMS)
    for p, s in zip(particles, search):
        assert p.best_iteration == s.best_iteration
        assert np.abs(p.image.astype(int) - s.image.astype(int)).max() <= 1
        assert p.compute["unet_forward"] == s.compute["unet_forward"] == 4 * STEPS


def test_particle_resampling_keeps_the_particle_with_the_best_one_step_estimate(tiny_pixel, tiny_classifier):
    """With a huge temperature and eta 0 the first resampling (after step 0) copies each item's particle whose
    one-step estimate the guide likes best into every slot; the copies stay identical, so the result is that
    particle's plain DDIM sample. Checked against picking it by hand."""
    from doodl_ray.methods.base import candidate_seed
    from doodl_ray.sampling.chain import chain_sample

    count = 6
    method = _method("particles", particles=ParticleConfig(count=count, temperature=1e4, interval=1, eta=0.0))
    results = _run(tiny_pixel, tiny_classifier, method, ITEMS)
    engine = Engine(tiny_pixel, load_torchscript_classifier(tiny_classifier), _method("none"))
    eps, schedule = engine.diffusion.condition(None, None, 1.0), engine.schedule
    for item, result in zip(ITEMS, results):
        noise = engine.problem([item]).draw([candidate_seed(item.seed, j) for j in range(count)])
        with torch.no_grad():
            x0 = schedule.x0(noise, eps(noise, schedule.timesteps[0]), 0)
            losses = engine.guidance.loss(((engine.diffusion.decode(x0) + 1) / 2).clamp(0, 1), [item.target] * count, None)
            chosen = int(losses.argmin())
            expected = chain_sample(noise[chosen : chosen + 1], schedule, eps)
        expected = ((expected + 1) / 2).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).numpy().astype(int)[0]
        assert np.abs(result.image.astype(int) - expected).max() <= 1


def test_best_of_n_matches_a_straightforward_diffusers_loop():
    """The shipped balanced digits model and guide: N plain DDIMScheduler samples from each item's candidate
    seeds, the one with the lowest cross-entropy kept, written here from scratch."""
    from diffusers import DDIMPipeline

    from doodl_ray.digits import ASSETS_DIR
    from doodl_ray.methods.base import candidate_seed

    steps, n = 10, 4
    guide = load_torchscript_classifier(str(ASSETS_DIR / "guide.pt"), crops=MultiCrop(count=0))
    engine = Engine(str(ASSETS_DIR / "balanced"), guide,
                    MethodConfig(name="best-of-n", candidates=n, sampler=SamplerConfig(steps=steps)))
    items = [engine.validate(Item(id=str(t), seed=200 + t, target=t)) for t in (2, 6)]
    ours = engine.run(items)
    assert {r.best_iteration for r in ours} != {0}  # the search chose, not the item's own noise

    pipe = DDIMPipeline.from_pretrained(str(ASSETS_DIR / "balanced"))
    pipe.scheduler.set_timesteps(steps)
    for item, result in zip(items, ours):
        best, best_loss = None, float("inf")
        for j in range(n):
            z = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(candidate_seed(item.seed, j)))
            with torch.no_grad():
                for t in pipe.scheduler.timesteps:
                    z = pipe.scheduler.step(pipe.unet(z, t).sample, t, z).prev_sample
                image = ((z + 1) / 2).clamp(0, 1)
                loss = float(torch.nn.functional.cross_entropy(guide.model((image - 0.5) / 0.5),
                                                               torch.tensor([item.target])))
            if loss < best_loss:
                best, best_loss = image, loss
        expected = best.mul(255).round().permute(0, 2, 3, 1)[0].numpy().astype(int)
        assert np.abs(result.image.astype(int) - expected).max() <= 1
