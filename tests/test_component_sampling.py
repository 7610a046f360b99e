"""Drawing from some components: Some-to-All is unbiased for MISELBO, Some-to-Some lies below.

All on a linear-Gaussian model whose every density is exact, so only Monte Carlo noise is left.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from scmixvae.mixture import (
    OBJECTIVES,
    ComponentCodedLinear,
    MixtureNormal,
    bound,
    jsd,
    mixture_densities,
    sample_components,
    validate_objective,
)

D_Z, D_X, SIGMA, N_OBS, S = 2, 3, 0.5, 3, 5


@pytest.fixture()
def toy():
    """A linear-Gaussian model and a mixture of S spread-out components per observation."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(D_X, D_Z, generator=g, dtype=torch.float64)
    x = torch.randn(N_OBS, D_X, generator=g, dtype=torch.float64) * 2
    loc = torch.randn(S, N_OBS, D_Z, generator=g, dtype=torch.float64) * 1.5
    scale = 0.4 + torch.rand(S, N_OBS, D_Z, generator=g, dtype=torch.float64)
    return w, x, MixtureNormal(loc, scale)


def _terms(w, x, qz, n_draws, n_sampled=None, **kwargs):
    component = sample_components(qz.n_components, n_sampled, x.shape[0])
    z = qz.rsample_components(component, n_draws)
    log_px_z = Normal(z @ w.T, SIGMA).log_prob(x).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    return qz.draw_terms(z, component, log_px_z, log_pz, **kwargs)


def test_component_subsets_are_distinct_uniform_and_independent():
    torch.manual_seed(0)
    draws = torch.stack([sample_components(7, 3, 4) for _ in range(4000)])  # [R, A, B]
    assert draws.shape == (4000, 3, 4)
    # distinct within an observation
    assert (draws.sort(1).values.diff(dim=1) > 0).all()
    # every component equally likely (probability A / S = 3 / 7)
    share = torch.stack([(draws == s).any(1).float().mean(0) for s in range(7)])
    assert torch.allclose(share, torch.full_like(share, 3 / 7), atol=0.03)
    # independent across observations: observations 0 and 1 share component 0 as often as
    # two independent draws would
    both = ((draws[:, :, 0] == 0).any(1) & (draws[:, :, 1] == 0).any(1)).float().mean()
    assert abs(float(both) - (3 / 7) ** 2) < 0.03
    # all of them in order, without randomness, when every component is drawn
    assert torch.equal(sample_components(4, None, 2), torch.arange(4)[:, None].expand(4, 2))
    assert torch.equal(sample_components(4, 4, 2), sample_components(4, None, 2))
    with pytest.raises(ValueError, match="n_sampled_components"):
        sample_components(4, 5, 2)


def test_all_components_is_exactly_the_stratified_miselbo(toy):
    w, x, qz = toy
    torch.manual_seed(1)
    stratified = _terms(w, x, qz, 6)
    torch.manual_seed(1)
    every = _terms(w, x, qz, 6, n_sampled=S)
    # the formula of the stratified MISELBO, written out on the same draws
    torch.manual_seed(1)
    z = qz.rsample(6)
    log_w = Normal(z @ w.T, SIGMA).log_prob(x).sum(-1) + 0.7 * (
        Normal(0.0, 1.0).log_prob(z).sum(-1) - qz.log_prob(z)
    )
    assert torch.equal(bound(every, "miselbo", beta=0.7), bound(stratified, "miselbo", beta=0.7))
    # the same sum in another order: equal to float64 rounding
    torch.testing.assert_close(
        bound(stratified, "miselbo", beta=0.7), log_w.mean((0, 1)), rtol=0, atol=1e-12
    )
    # with every component drawn the sub-mixture is the mixture
    with_sub = _terms(w, x, qz, 6, with_sub_mixture=True)
    torch.testing.assert_close(with_sub.log_q_sub, with_sub.log_q_mix)
    torch.testing.assert_close(bound(with_sub, "some_to_some"), bound(with_sub, "miselbo"))


@pytest.mark.parametrize("n_sampled", [1, 2, 4])
def test_some_to_all_is_unbiased_and_some_to_some_is_below(toy, n_sampled):
    w, x, qz = toy
    torch.manual_seed(2)
    reference = bound(_terms(w, x, qz, 40_000), "miselbo")  # stratified, many draws
    # 20,000 independent replicates as a batch: components are drawn per observation
    n = 20_000
    replicated = MixtureNormal(
        qz.component_loc.repeat(1, n, 1), qz.component_scale.repeat(1, n, 1)
    )
    reps = _terms(w, x.repeat(n, 1), replicated, 1, n_sampled, with_sub_mixture=True)

    def per_replicate(values: torch.Tensor) -> torch.Tensor:
        return values.view(n, N_OBS)

    some_to_all = per_replicate(bound(reps, "miselbo"))
    some_to_some = per_replicate(bound(reps, "some_to_some"))
    se = some_to_all.std(0) / math.sqrt(n)
    # the reference's own noise is a fraction of the replicates' (40,000 x 5 draws vs 20,000)
    assert ((some_to_all.mean(0) - reference).abs() < 3 * se * math.sqrt(1.25)).all()
    # on the same draws Some-to-Some is below Some-to-All in expectation: the gap is the mean
    # entropy of the sub-mixtures minus the entropy of the mixture, <= 0
    gap = some_to_some - some_to_all
    assert (gap.mean(0) < -3 * gap.std(0) / math.sqrt(n)).all()
    # Some-to-Some of a single component is the component's own ELBO: the ensemble bound
    if n_sampled == 1:
        torch.testing.assert_close(bound(reps, "some_to_some"), bound(reps, "ensemble"))
    # the JSD estimate from sampled components is unbiased too
    full_jsd = jsd(_terms(w, x, qz, 40_000))
    sampled_jsd = per_replicate(jsd(reps))
    se_jsd = sampled_jsd.std(0) / math.sqrt(n)
    assert ((sampled_jsd.mean(0) - full_jsd).abs() < 3 * se_jsd * math.sqrt(1.25)).all()


def test_mixture_densities_by_brute_force():
    torch.manual_seed(4)
    log_q = torch.randn(2, 3, 6, 4, dtype=torch.float64)  # [L, A, S, B]
    component = sample_components(6, 3, 4)
    mix, own, sub = mixture_densities(log_q, component, with_sub_mixture=True)
    for l_ in range(2):
        for a in range(3):
            for b in range(4):
                s = component[a, b]
                drawn = component[:, b]
                assert torch.isclose(mix[l_, a, b], log_q[l_, a, :, b].logsumexp(0) - math.log(6))
                assert own[l_, a, b] == log_q[l_, a, s, b]
                expected = log_q[l_, a, drawn, b].logsumexp(0) - math.log(3)
                assert torch.isclose(sub[l_, a, b], expected)


def test_unknown_objectives_are_refused_with_the_valid_ones():
    assert validate_objective("some_to_some") == "some_to_some"
    with pytest.raises(ValueError, match="'miselbo', 'ensemble', 'some_to_some'"):
        validate_objective("elbo")
    assert OBJECTIVES == ("miselbo", "ensemble", "some_to_some")


def test_a_coded_layer_is_a_linear_layer_of_input_and_one_hot_code():
    torch.manual_seed(5)
    layer = ComponentCodedLinear(n_components=4, n_in=6, n_out=3).double()
    reference = torch.nn.Linear(6 + 4, 3).double()
    with torch.no_grad():  # the one-hot columns of the concatenated layer are the codes
        reference.weight.copy_(torch.cat([layer.linear.weight, layer.code.T], dim=1))
        reference.bias.copy_(layer.linear.bias)
    h = torch.randn(5, 6, dtype=torch.float64)
    out = layer(h, per_component=False)
    assert out.shape == (5, 4, 3)
    for s in range(4):
        code = torch.nn.functional.one_hot(torch.full((5,), s), 4).double()
        torch.testing.assert_close(out[:, s], reference(torch.cat([h, code], dim=1)))
    per = torch.randn(5, 4, 6, dtype=torch.float64)
    out = layer(per, per_component=True)
    for s in range(4):
        code = torch.nn.functional.one_hot(torch.full((5,), s), 4).double()
        torch.testing.assert_close(out[:, s], reference(torch.cat([per[:, s], code], dim=1)))
    with pytest.raises(ValueError, match="per-component"):
        layer(h, per_component=True)
