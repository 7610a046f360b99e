r"""Variational bounds and the importance-sampled log-likelihood, for any model.

Every function works on log-densities evaluated at stratified draws ``z ~ q_s`` of shape
``[L, S, B]`` (``L`` draws per component, ``S`` components, ``B`` observations), so the same code
serves the single-cell and the image models.

The bounds, per observation (higher is better):

* MISELBO (multiple importance sampling ELBO), each draw weighed against the *whole* mixture

  .. math:: \mathcal{L}_{MIS} = \frac1S \sum_s \mathbb{E}_{z \sim q_s}\big[\log p(x \mid z)
            + \beta (\log p(z) - \log q_{\mathrm{mix}}(z \mid x))\big]

* the ensemble ELBO, each draw weighed against its own component only (the independently trained
  baseline the method is compared with).

With ``importance_weighted=True`` the ``L`` draws of a component are combined as
:math:`\log \frac1L \sum_l w_{s,l}` (IWAE form) before averaging over components.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from .distribution import MixtureNormal

NLLEstimator = Literal["mixture", "per_component"]


def log_mean_exp(x: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """Numerically stable :math:`\\log \\operatorname{mean} \\exp` over ``dim``."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    count = math.prod(x.shape[d] for d in dims)
    return torch.logsumexp(x, dim=dims) - math.log(count)


def stratified_bound(
    log_px_z: torch.Tensor,
    log_pz: torch.Tensor,
    log_qz: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    importance_weighted: bool = False,
) -> torch.Tensor:
    r"""Average bound over stratified draws, given the proposal density of each draw.

    Parameters
    ----------
    log_px_z
        :math:`\log p(x \mid z)` at the draws, ``[L, S, B]``.
    log_pz
        :math:`\log p(z)` at the draws, ``[L, S, B]``.
    log_qz
        Denominator density at the draws, ``[L, S, B]``: the mixture density for MISELBO, the
        drawing component's density for the ensemble ELBO.
    beta
        KL warm-up factor multiplying :math:`\log p(z) - \log q(z)`.
    importance_weighted
        Combine the ``L`` draws of each component with a log-mean-exp (IWAE form).

    Returns
    -------
    Bound per observation, ``[B]``.
    """
    if not (log_px_z.dim() == log_pz.dim() == log_qz.dim() == 3):
        raise ValueError(
            "log densities must have shape [L, S, B]; got "
            f"{tuple(log_px_z.shape)}, {tuple(log_pz.shape)}, {tuple(log_qz.shape)}."
        )
    log_w = log_px_z + beta * (log_pz - log_qz)
    if importance_weighted:
        return log_mean_exp(log_w, dim=0).mean(0)
    return log_w.mean(dim=(0, 1))


def miselbo(
    qz: MixtureNormal,
    z: torch.Tensor,
    log_px_z: torch.Tensor,
    log_pz: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    importance_weighted: bool = False,
) -> torch.Tensor:
    """MISELBO per observation: each draw is weighed against the whole mixture.

    Parameters
    ----------
    qz
        The mixture posterior.
    z
        Stratified draws ``[L, S, B, D]`` from ``qz.rsample(L)``.
    log_px_z, log_pz
        Likelihood and prior log densities at ``z``, ``[L, S, B]``.
    beta, importance_weighted
        See :func:`stratified_bound`.

    Returns
    -------
    ``[B]``; equals the standard ELBO when ``S == 1``.
    """
    return stratified_bound(log_px_z, log_pz, qz.log_prob(z), beta, importance_weighted)


def ensemble_elbo(
    qz: MixtureNormal,
    z: torch.Tensor,
    log_px_z: torch.Tensor,
    log_pz: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    importance_weighted: bool = False,
) -> torch.Tensor:
    """Mean of the components' own ELBOs: the independently trained ensemble.

    Each draw is weighed against the component that drew it, so no component sees another's
    density and the gradients of component ``s`` depend on component ``s`` alone.
    Arguments as in :func:`miselbo`.
    """
    return stratified_bound(
        log_px_z, log_pz, qz.own_component_log_prob(z), beta, importance_weighted
    )


def mixture_log_weights(
    qz: MixtureNormal, z: torch.Tensor, log_px_z: torch.Tensor, log_pz: torch.Tensor
) -> torch.Tensor:
    r"""Importance log-weights :math:`\log p(x, z) - \log q_{\mathrm{mix}}(z \mid x)`."""
    return log_px_z + log_pz - qz.log_prob(z)


def accumulate_log_weights(
    log_weight_fn: Callable[[int], torch.Tensor],
    n_samples_per_component: int,
    chunk_size: int = 100,
) -> torch.Tensor:
    r"""Log-sum-exp of stratified importance log-weights over draws, per component.

    Parameters
    ----------
    log_weight_fn
        ``log_weight_fn(k)`` draws ``k`` samples per component and returns their log-weights,
        shape ``[k, S, B]``.
    n_samples_per_component
        Total draws per component ``K``, produced ``chunk_size`` at a time.
    chunk_size
        Draws per component per call of ``log_weight_fn`` (the memory bound).

    Returns
    -------
    ``[S, B]``: :math:`\log \sum_k w_{s,k}`; finish with :func:`log_likelihood_from_sums`.
    """
    if n_samples_per_component < 1:
        raise ValueError(f"n_samples_per_component must be >= 1, got {n_samples_per_component}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    running: torch.Tensor | None = None
    remaining = n_samples_per_component
    while remaining > 0:
        k = min(chunk_size, remaining)
        log_w = log_weight_fn(k)
        if log_w.dim() != 3 or log_w.shape[0] != k:
            raise ValueError(
                f"log_weight_fn({k}) must return shape [{k}, S, B], got {tuple(log_w.shape)}."
            )
        chunk = torch.logsumexp(log_w, dim=0)
        running = chunk if running is None else torch.logaddexp(running, chunk)
        remaining -= k
    assert running is not None
    return running


def log_likelihood_from_sums(
    log_sums: torch.Tensor, n_samples_per_component: int, estimator: NLLEstimator = "mixture"
) -> torch.Tensor:
    """Finish :func:`accumulate_log_weights` into a log-likelihood estimate per observation.

    ``"mixture"``: one log-mean-exp over all ``S * K`` weights (tight). ``"per_component"``:
    the mean over components of each one's log-mean-exp (the method's reference code; looser).
    """
    if estimator == "mixture":
        total = log_sums.shape[0] * n_samples_per_component
        return torch.logsumexp(log_sums, dim=0) - math.log(total)
    if estimator == "per_component":
        return (log_sums - math.log(n_samples_per_component)).mean(0)
    raise ValueError(f"estimator must be 'mixture' or 'per_component', got {estimator!r}.")


def importance_sampled_log_likelihood(
    log_weight_fn: Callable[[int], torch.Tensor],
    n_samples_per_component: int,
    chunk_size: int = 100,
    estimator: NLLEstimator = "mixture",
) -> torch.Tensor:
    r"""Estimate :math:`\log p(x)` by importance sampling with the mixture as proposal.

    Draws are stratified: ``K = n_samples_per_component`` from every component, produced
    ``chunk_size`` at a time so that ``K = 5000`` fits in memory.

    Parameters
    ----------
    log_weight_fn
        ``log_weight_fn(k)`` draws ``k`` samples per component and returns their log-weights
        :math:`\log p(x, z) - \log q_{\mathrm{mix}}(z \mid x)`, shape ``[k, S, B]``.
    n_samples_per_component
        ``K``.
    chunk_size
        Draws per component per call of ``log_weight_fn``.
    estimator
        ``"mixture"`` (default, tighter): one log-mean-exp over all ``S * K`` weights.
        ``"per_component"``: the average over components of each component's log-mean-exp, as
        in the method's reference code; a looser bound.

    Returns
    -------
    Estimate per observation, ``[B]``.
    """
    if estimator not in ("mixture", "per_component"):
        raise ValueError(f"estimator must be 'mixture' or 'per_component', got {estimator!r}.")
    sums = accumulate_log_weights(log_weight_fn, n_samples_per_component, chunk_size)
    return log_likelihood_from_sums(sums, n_samples_per_component, estimator)
