"""MISELBO on a bimodal target: two components split the modes and beat one component."""

from __future__ import annotations

import math

import torch

from scmixvae.mixture import MixtureNormal, bound, sample_components

MODES = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])


def _log_target(z: torch.Tensor) -> torch.Tensor:
    """Normalised equal mixture of two unit Gaussians at MODES; z [..., D] -> [...]."""
    comp = torch.distributions.Normal(MODES, 1.0).log_prob(z.unsqueeze(-2)).sum(-1)
    return torch.logsumexp(comp, -1) - math.log(2)


def _miselbo(qz: MixtureNormal, n_draws: int, n_sampled: int | None = None) -> torch.Tensor:
    component = sample_components(qz.n_components, n_sampled, 1)
    z = qz.rsample_components(component, n_draws)
    # the target is the whole joint here: log p(x|z) = 0, log p(z) = log target
    terms = qz.draw_terms(z, component, torch.zeros(z.shape[:-1]), _log_target(z))
    return bound(terms, "miselbo")


def _fit(
    n_components: int, seed: int, steps: int = 600, n_sampled: int | None = None
) -> tuple[MixtureNormal, float]:
    torch.manual_seed(seed)
    loc = torch.nn.Parameter(torch.randn(n_components, 1, 2) * 0.5)
    log_scale = torch.nn.Parameter(torch.zeros(n_components, 1, 2))
    opt = torch.optim.Adam([loc, log_scale], lr=0.05)
    for _ in range(steps):
        loss = -_miselbo(MixtureNormal(loc, log_scale.exp()), 32, n_sampled).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        qz = MixtureNormal(loc, log_scale.exp())
        return qz, _miselbo(qz, 20_000).item()


def test_two_components_take_different_modes_and_beat_one():
    # log Z = 0 for the normalised target; one Gaussian can reach at best about -log 2
    _one, bound_one = _fit(1, seed=0)
    two, bound_two = _fit(2, seed=0)
    assert bound_one < -0.5
    assert bound_two > -0.05
    assert bound_two > bound_one + 0.5
    xs = sorted(two.component_loc[:, 0, 0].tolist())
    assert abs(xs[0] - MODES[0, 0]) < 0.5 and abs(xs[1] - MODES[1, 0]) < 0.5


def test_some_to_all_with_one_sampled_component_also_covers_both_modes():
    # each step draws from 1 of the 4 components, yet weighs against all 4: the components
    # still cooperate, and the bound reaches the two-mode optimum
    four, bound_four = _fit(4, seed=0, steps=1500, n_sampled=1)
    assert bound_four > -0.05
    xs = four.component_loc[:, 0, 0]
    assert (xs < -2).any() and (xs > 2).any()
