"""The pCN / pCNL chains over the initial noise: their Metropolis-Hastings ratio equals the one written out from
Gaussian densities, and chains moved with it sample a known tilted Gaussian."""

import math

import torch

from doodl_ray.methods.noise_mcmc import State, _joint, _select


def _state(z: torch.Tensor, phi: torch.Tensor, drift: torch.Tensor | None) -> State:
    zeros = torch.zeros(len(z), dtype=torch.float64)
    return State(z, phi.double(), drift, z, zeros, zeros)


def _log_normal(x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
    return (-(x - mean).pow(2) / (2 * var) - 0.5 * math.log(2 * math.pi * var)).flatten(1).sum(1)


def test_the_langevin_ratio_is_the_one_written_out_from_densities():
    """log [π(y) q(z|y)] − log [π(z) q(y|z)] with π = N(0, I) e^Φ and q(y|z) = N(ρz + √(1−ρ²)(√h/2) g(z), (1−ρ²) I)."""
    torch.manual_seed(0)
    h = 0.7
    rho = (1 - h / 4) / (1 + h / 4)
    z, y = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    gz, gy = torch.randn_like(z), torch.randn_like(y)
    phi_z, phi_y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a, b = _state(z, phi_z, gz), _state(y, phi_y, gy)
    ours = _joint(b, a, rho, h) - _joint(a, b, rho, h)

    def log_pi(x, phi):
        return _log_normal(x, torch.zeros_like(x), 1.0) + phi

    def log_q(to, frm, g):
        return _log_normal(to, rho * frm + math.sqrt(1 - rho**2) * math.sqrt(h) / 2 * g, 1 - rho**2)

    direct = (log_pi(y, phi_y) + log_q(z, y, gy)) - (log_pi(z, phi_z) + log_q(y, z, gz))
    torch.testing.assert_close(ours, direct, rtol=1e-10, atol=1e-10)
    # without a drift (pCN) the proposal keeps N(0, I) and the ratio is the tilt's alone
    plain = _joint(_state(y, phi_y, None), _state(z, phi_z, None), rho, h) - _joint(_state(z, phi_z, None),
                                                                                    _state(y, phi_y, None), rho, h)
    torch.testing.assert_close(plain, phi_y - phi_z)


def test_langevin_chains_sample_a_tilted_gaussian():
    """N(0, I) tilted by Φ(z) = ⟨c, z⟩ − ‖z‖²/4 is N(2c/3, 2/3 I): chains moved by our proposal and ratio reach it."""
    c = torch.tensor([1.5, -1.0], dtype=torch.float64)
    phi = lambda z: z @ c - z.pow(2).sum(1) / 4  # noqa: E731
    grad = lambda z: c - z / 2  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    h = 0.8
    rho = (1 - h / 4) / (1 + h / 4)
    z = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    state = _state(z, phi(z), grad(z))
    for _ in range(60):
        xi = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        y = rho * state.z + math.sqrt(1 - rho**2) * (xi + math.sqrt(h) / 2 * state.drift)
        proposal = _state(y, phi(y), grad(y))
        log_a = _joint(proposal, state, rho, h) - _joint(state, proposal, rho, h)
        state = _select(torch.log(torch.rand(len(y), generator=gen, dtype=torch.float64)) < log_a, proposal, state)
    torch.testing.assert_close(state.z.mean(0), 2 * c / 3, atol=0.06, rtol=0)
    torch.testing.assert_close(state.z.var(0), torch.full((2,), 2 / 3, dtype=torch.float64), atol=0.06, rtol=0)
