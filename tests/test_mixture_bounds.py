"""The bounds and the likelihood estimator on a model whose log p(x) is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from scmixvae.mixture import (
    MixtureNormal,
    accumulate_log_weights,
    bound,
    component_responsibilities,
    jsd,
    log_likelihood_from_sums,
    log_weights,
    sample_components,
)

D_Z, D_X, SIGMA = 2, 3, 0.5


@pytest.fixture()
def linear_gaussian():
    """z ~ N(0, I), x | z ~ N(Wz + b, sigma^2 I); returns the model, data and exact posterior."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(D_X, D_Z, generator=g, dtype=torch.float64)
    b = torch.randn(D_X, generator=g, dtype=torch.float64)
    x = torch.randn(4, D_X, generator=g, dtype=torch.float64) * 2  # B = 4 observations
    cov_x = w @ w.T + SIGMA**2 * torch.eye(D_X, dtype=torch.float64)
    log_px = MultivariateNormal(b, cov_x).log_prob(x)
    post_cov = torch.linalg.inv(torch.eye(D_Z, dtype=torch.float64) + w.T @ w / SIGMA**2)
    post_mean = (x - b) @ w @ post_cov / SIGMA**2  # post_cov symmetric
    return w, b, x, log_px, post_mean, post_cov


def _log_joint_terms(w, b, x, z):
    """log p(x | z) and log p(z) for z of shape [..., B, D_Z] -> [..., B] each."""
    log_px_z = Normal(z @ w.T + b, SIGMA).log_prob(x).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_px_z, log_pz


def _terms(qz, z, w, b, x, component=None, **kwargs):
    """The core's per-draw terms of stratified (or sub-sampled) draws ``z`` on the toy model."""
    if component is None:
        component = sample_components(qz.n_components, None, z.shape[-2])
    return qz.draw_terms(z, component, *_log_joint_terms(w, b, x, z), **kwargs)


def importance_sampled_log_likelihood(log_weight_fn, n_samples, chunk_size, estimator="mixture"):
    return log_likelihood_from_sums(
        accumulate_log_weights(log_weight_fn, n_samples, chunk_size), n_samples, estimator
    )


def _mixture_near_posterior(post_mean, post_cov, n_components, spread=1.0):
    g = torch.Generator().manual_seed(2)
    sd = post_cov.diagonal().sqrt()
    shifts = torch.randn(n_components, *post_mean.shape, generator=g, dtype=torch.float64)
    loc = post_mean + spread * shifts * sd
    scale = (1.3 * sd).expand_as(loc).clone()
    return MixtureNormal(loc, scale)


def test_every_bound_is_below_log_px(linear_gaussian):
    w, b, x, log_px, post_mean, post_cov = linear_gaussian
    qz = _mixture_near_posterior(post_mean, post_cov, n_components=3, spread=2.0)
    terms = _terms(qz, qz.rsample(4000), w, b, x)
    bounds = {"miselbo": bound(terms, "miselbo"), "ensemble": bound(terms, "ensemble")}
    # the importance-weighted bound holds in expectation: average 200 independent estimates
    iw_estimates = []
    for _ in range(200):
        iw = _terms(qz, qz.rsample(64), w, b, x)
        iw_estimates.append(bound(iw, "miselbo", importance_weighted=True))
    bounds["miselbo_iw"] = torch.stack(iw_estimates).mean(0)
    for name, value in bounds.items():
        assert value.shape == (4,)
        assert torch.all(value < log_px + 0.05), name
    # the components differ, so MISELBO is strictly above the ensemble bound here
    assert torch.all(bounds["miselbo"] > bounds["ensemble"] + 0.05)
    # the importance-weighted form with 64 draws is tighter than the averaged one
    assert torch.all(bounds["miselbo_iw"] > bounds["miselbo"])


def test_bound_is_exact_when_components_are_the_true_posterior(linear_gaussian):
    w, b, x, log_px, post_mean, post_cov = linear_gaussian
    sd = post_cov.diagonal().sqrt()
    # the posterior covariance is not diagonal in general: diagonalise the model instead
    assert post_cov.shape == (D_Z, D_Z)
    w_diag = torch.linalg.qr(w)[0] * torch.tensor([1.5, 0.7], dtype=torch.float64)
    cov_x = w_diag @ w_diag.T + SIGMA**2 * torch.eye(D_X, dtype=torch.float64)
    log_px = MultivariateNormal(b, cov_x).log_prob(x)
    post_cov = torch.linalg.inv(torch.eye(D_Z, dtype=torch.float64) + w_diag.T @ w_diag / SIGMA**2)
    assert torch.allclose(post_cov, torch.diag(post_cov.diagonal()), atol=1e-12)
    post_mean = (x - b) @ w_diag @ post_cov / SIGMA**2
    sd = post_cov.diagonal().sqrt().expand_as(post_mean)
    qz = MixtureNormal(post_mean.expand(3, -1, -1), sd.expand(3, -1, -1))
    terms = _terms(qz, qz.rsample(10), w_diag, b, x)
    assert torch.allclose(bound(terms, "miselbo"), log_px, atol=1e-10)
    log_w = log_weights(terms)
    assert torch.allclose(log_w, log_px.expand_as(log_w), atol=1e-10)


def test_importance_sampling_converges_to_log_px(linear_gaussian):
    w, b, x, log_px, post_mean, post_cov = linear_gaussian
    qz = _mixture_near_posterior(post_mean, post_cov, n_components=3)

    def log_weight_fn(k):
        return log_weights(_terms(qz, qz.rsample(k), w, b, x))

    estimate = importance_sampled_log_likelihood(log_weight_fn, 20_000, chunk_size=2_500)
    assert torch.allclose(estimate, log_px, atol=0.02)


def test_estimators_are_chunk_invariant_and_ordered():
    log_w = torch.randn(50, 3, 7, dtype=torch.float64) * 3
    position = {"i": 0}

    def replay(k):  # hands out the same pre-drawn weights whatever the chunking
        out = log_w[position["i"] : position["i"] + k]
        position["i"] += k
        return out

    results = {}
    for chunk in (1, 7, 50, 1000):
        for estimator in ("mixture", "per_component"):
            position["i"] = 0
            results[chunk, estimator] = importance_sampled_log_likelihood(
                replay, 50, chunk, estimator
            )
    tight = torch.logsumexp(log_w.reshape(-1, 7), 0) - math.log(150)
    paper = (torch.logsumexp(log_w, 0) - math.log(50)).mean(0)
    for chunk in (1, 7, 50, 1000):
        assert torch.allclose(results[chunk, "mixture"], tight)
        assert torch.allclose(results[chunk, "per_component"], paper)
    # mean of logs <= log of mean (Jensen): the paper code's estimator is the looser bound
    assert torch.all(paper <= tight)
    with pytest.raises(ValueError, match="estimator"):
        log_likelihood_from_sums(torch.zeros(3, 7), 5, estimator="bogus")


def test_single_component_miselbo_is_the_standard_elbo(linear_gaussian):
    w, b, x, _, post_mean, _post_cov = linear_gaussian
    loc, scale = post_mean + 0.3, torch.full_like(post_mean, 0.4)
    qz = MixtureNormal(loc.unsqueeze(0), scale.unsqueeze(0))
    z = qz.rsample(5)  # [5, 1, B, D]
    log_px_z, log_pz = _log_joint_terms(w, b, x, z)
    terms = _terms(qz, z, w, b, x)
    standard = (log_px_z + log_pz - Normal(loc, scale).log_prob(z).sum(-1)).mean((0, 1))
    for objective in ("miselbo", "ensemble", "some_to_some"):
        assert torch.allclose(bound(terms, objective), standard, rtol=0, atol=1e-12)
    # beta scales only the prior / posterior term
    half = bound(terms, "miselbo", beta=0.5)
    expected = (log_px_z + 0.5 * (log_pz - Normal(loc, scale).log_prob(z).sum(-1))).mean((0, 1))
    assert torch.allclose(half, expected, atol=1e-12)


def test_gap_between_miselbo_and_ensemble_is_the_jsd(linear_gaussian):
    w, b, x, _, post_mean, post_cov = linear_gaussian
    n_components = 4
    qz = _mixture_near_posterior(post_mean, post_cov, n_components, spread=1.5)
    terms = _terms(qz, qz.rsample(3000), w, b, x)
    gap = bound(terms, "miselbo") - bound(terms, "ensemble")
    divergence = jsd(terms)
    assert torch.allclose(gap, divergence, atol=1e-10)
    assert torch.all(divergence > 0) and torch.all(divergence < math.log(n_components))

    identical = MixtureNormal(
        qz.component_loc[:1].expand(3, -1, -1), qz.component_scale[:1].expand(3, -1, -1)
    )
    assert torch.allclose(
        jsd(_terms(identical, identical.rsample(10), w, b, x)),
        torch.zeros(4, dtype=torch.float64),
        atol=1e-12,
    )

    far = MixtureNormal(
        torch.arange(3, dtype=torch.float64).view(3, 1, 1).expand(3, 4, 2) * 100.0,
        torch.ones(3, 4, 2, dtype=torch.float64),
    )
    assert torch.allclose(
        jsd(_terms(far, far.rsample(10), w, b, x)),
        torch.full((4,), math.log(3), dtype=torch.float64),
        atol=1e-6,
    )


def test_mixture_density_and_moments_match_torch():
    loc = torch.randn(3, 5, 2, dtype=torch.float64)
    scale = torch.rand(3, 5, 2, dtype=torch.float64) + 0.2
    qz = MixtureNormal(loc, scale)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(5, 3, dtype=torch.float64)),
        torch.distributions.Independent(Normal(loc.movedim(0, 1), scale.movedim(0, 1)), 1),
    )
    z = torch.randn(7, 5, 2, dtype=torch.float64)
    assert torch.allclose(qz.log_prob(z), reference.log_prob(z))
    assert torch.allclose(qz.loc, reference.mean)
    assert torch.allclose(qz.variance, reference.variance)
    draws = qz.sample_mixture(200_000)
    assert draws.shape == (200_000, 5, 2)
    assert torch.allclose(draws.mean(0), qz.loc, atol=0.03)
    assert torch.allclose(draws.var(0), qz.variance, rtol=0.03)
    resp = qz.responsibilities(z)
    assert resp.shape == (7, 3, 5)
    assert torch.allclose(resp.sum(-2), torch.ones(7, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        MixtureNormal(loc, scale[:2])
    # declared parameters are batch-first, so splitting and joining along cells works
    params = {name: getattr(qz, name) for name in qz.arg_constraints}
    assert params["cell_loc"].shape == (5, 3, 2)
    halves = [type(qz)(**{k: v[i : i + 3] for k, v in params.items()}) for i in (0, 3)]
    joined = type(qz)(**{k: torch.cat([getattr(h, k) for h in halves]) for k in params})
    assert torch.equal(joined.component_loc, loc) and torch.equal(
        joined.log_prob(z), qz.log_prob(z)
    )


def test_responsibilities():
    log_w = torch.zeros(10, 2, 3)
    log_w[:, 1, 0] = -50.0  # cell 0: component 1's draws carry no weight
    resp = component_responsibilities(accumulate_log_weights(lambda k: log_w[:k], 10, 10))
    assert resp.shape == (2, 3)
    assert torch.allclose(resp.sum(0), torch.ones(3))
    assert resp[0, 0] > 0.999 and torch.allclose(resp[:, 1], torch.tensor([0.5, 0.5]))
