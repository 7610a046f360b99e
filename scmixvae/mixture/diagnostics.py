r"""Diagnostics of a mixture posterior: component divergence, usage and weight quality."""

from __future__ import annotations

import torch

from .distribution import MixtureNormal


def generalized_jsd(qz: MixtureNormal, z: torch.Tensor) -> torch.Tensor:
    r"""Monte Carlo estimate of the generalized Jensen–Shannon divergence of the components.

    .. math:: \mathrm{JSD} = \frac1S \sum_s \mathbb{E}_{z \sim q_s}
              \big[\log q_s(z) - \log q_{\mathrm{mix}}(z)\big] \in [0, \log S]

    It is exactly the gap MISELBO − mean component ELBO (at ``beta = 1``, averaged draws):
    0 when all components coincide, ``log S`` when they do not overlap.

    Parameters
    ----------
    qz
        The mixture.
    z
        Stratified draws ``[L, S, B, D]`` from ``qz.rsample(L)``.

    Returns
    -------
    ``[B]``.
    """
    return (qz.own_component_log_prob(z) - qz.log_prob(z)).mean(dim=(0, 1))


def component_responsibilities(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Share of the importance-sampled likelihood contributed by each component's draws.

    With stratified draws and weights :math:`w = p(x, z) / q_{\mathrm{mix}}(z)`, component
    ``s`` accounts for :math:`\sum_l w_{s,l} / \sum_{s',l} w_{s',l}` of the estimate of
    :math:`p(x)`: the components that sit on the true posterior get the mass.

    Parameters
    ----------
    log_weights
        ``[L, S, B]``.

    Returns
    -------
    ``[S, B]``, summing to one over components.
    """
    return torch.softmax(torch.logsumexp(log_weights, dim=0), dim=0)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Kish effective sample size :math:`(\sum w)^2 / \sum w^2` of all draws, ``[B]``.

    Parameters
    ----------
    log_weights
        ``[..., B]``; every axis but the last is pooled.
    """
    flat = log_weights.reshape(-1, log_weights.shape[-1])
    return torch.exp(2 * torch.logsumexp(flat, 0) - torch.logsumexp(2 * flat, 0))
