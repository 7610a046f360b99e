r"""Importance weights of posterior draws for scvi-tools' importance-weighted expression and DE.

scvi-tools' ``get_normalized_expression(weights="importance")`` (and with it
``differential_expression(weights="importance")``) weighs each latent draw :math:`z` of a
group of cells by how well it explains the group as a whole (Boyeau et al. 2023):

.. math:: w(z) \propto \frac{p(z)\, \sum_a p(x_a \mid z) / p(x_a)}{\sum_a q(z \mid x_a)},

over anchor cells :math:`a`. scvi-tools' own implementation needs a cell-major Gaussian
posterior; here :math:`q(z \mid x_a)` is each anchor's *mixture* posterior, re-encoded from the
anchors, since the mixtures scvi-tools collects are concatenated along their component axis.
"""

from __future__ import annotations

import numpy as np
import torch
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from torch.distributions import Distribution

from scmixvae.mixture import MixtureNormal

# bound on the [draws, S, anchors, latent] temporary of the anchors' mixture densities
MAX_DENSITY_ELEMENTS = 20_000_000


def likelihood_at_library(px: Distribution, gene_likelihood: str, library: torch.Tensor):
    """The count likelihood of ``px``'s expression profile at another cell's library size."""
    mu = px.scale * library
    if gene_likelihood == "zinb":
        return ZeroInflatedNegativeBinomial(mu=mu, theta=px.theta, zi_logits=px.zi_logits)
    if gene_likelihood == "nb":
        return NegativeBinomial(mu=mu, theta=px.theta)
    if gene_likelihood == "poisson":
        return Poisson(rate=mu)
    raise ValueError(f"no importance weights for gene_likelihood {gene_likelihood!r}.")


def mixture_log_density_matrix(anchors: MixtureNormal, z: torch.Tensor) -> torch.Tensor:
    """:math:`\\log q(z_i \\mid x_a)` of every draw under every anchor's mixture, ``[N, A]``.

    Parameters
    ----------
    anchors
        The anchors' mixture posteriors, ``[S, A, D]``.
    z
        Draws ``[N, D]``.
    """
    n_components, n_anchors, n_latent = anchors.component_loc.shape
    per_pass = max(1, MAX_DENSITY_ELEMENTS // (n_components * n_anchors * n_latent))
    return torch.cat([
        anchors.log_prob(chunk[:, None, :].expand(-1, n_anchors, -1))
        for chunk in z.split(per_pass)
    ])  # fmt: skip


def importance_log_weights(
    log_pz: torch.Tensor,
    log_px_z: torch.Tensor,
    log_px: torch.Tensor,
    log_qz: torch.Tensor,
    truncation: bool,
) -> np.ndarray:
    """Normalised weights from the terms of the module docstring (draws ``N``, anchors ``A``).

    Parameters
    ----------
    log_pz
        ``[N]``.
    log_px_z
        ``[N, A]``: every anchor's likelihood at every draw.
    log_px
        ``[A]``: the anchors' marginal log-likelihoods.
    log_qz
        ``[N, A]``: every anchor's posterior density at every draw.
    truncation
        Truncate the weights below their mean (Ionides 2008), as scvi-tools does.

    Returns
    -------
    ``[N]``, summing to one.
    """
    log_w = torch.logsumexp(
        log_pz[:, None] + log_px_z - log_px[None, :] - torch.logsumexp(log_qz, 1, keepdim=True),
        dim=1,
    )
    if truncation:
        tau = torch.logsumexp(log_w, 0) - np.log(log_w.shape[0])
        log_w = torch.clamp(log_w, min=tau)
    return (log_w - torch.logsumexp(log_w, 0)).exp().numpy()
