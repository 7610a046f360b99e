r"""Latent priors, written once for every data domain: the cookbook's prior recipes.

A prior is a module with ``log_prob(z) -> [...]`` for points ``z [..., D]`` and
``sample(n) -> [n, D]``. The bounds never see a prior: they receive :math:`\log p(z)` at the draws
through :class:`~scmixvae.mixture.DrawTerms`, so every recipe trains with the same estimator.

* :class:`StandardNormalPrior` — :math:`\mathcal{N}(0, I)`, the only one with a closed-form KL
  to a Gaussian component (``closed_form_kl``).
* :class:`VampPrior` — :math:`p(z) = \frac{1}{SK} \sum_{s,k} q_s(z \mid u_k)`: ``K`` learned
  pseudo-inputs pushed through all ``S`` components of the *same* mixture encoder (Tomczak &
  Welling, 2018; the mixture form of Kviman et al., 2023). The domain supplies how a
  pseudo-input is encoded (images clamp pixels to ``[0, 1]``; counts pass fixed batch
  covariates), since only it knows the encoder's input space.
* :class:`MixtureOfGaussiansPrior` — a learned mixture of ``K`` diagonal Gaussians in latent
  space with learned weights, as MrVI's ``"mog"`` prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import nn
from torch.distributions import Normal

from .distribution import MixtureNormal, gaussian_log_prob_matrix

PriorName = Literal["standard_normal", "vamp", "mog"]
PRIORS: tuple[str, ...] = get_args(PriorName)


def validate_prior(prior: str, n_prior_components: int | None = None) -> PriorName:
    """Return ``prior`` if it names a prior, else raise a one-line :class:`ValueError`."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(map(repr, PRIORS))}; got {prior!r}.")
    if n_prior_components is not None and (
        isinstance(n_prior_components, bool)
        or not isinstance(n_prior_components, int)
        or n_prior_components < 1
    ):
        raise ValueError(
            f"n_prior_components must be an integer >= 1, got {n_prior_components!r}."
        )
    return prior  # type: ignore[return-value]


class StandardNormalPrior(nn.Module):
    """:math:`\\mathcal{N}(0, I)` over ``n_latent`` dimensions."""

    closed_form_kl = True

    def __init__(self, n_latent: int):
        super().__init__()
        self.n_latent = n_latent
        # follows the module's device, so sample() draws where the model lives
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., D]`` -> ``[...]``."""
        return Normal(0.0, 1.0).log_prob(z).sum(-1)

    def sample(self, n: int) -> torch.Tensor:
        """``[n, D]``."""
        return torch.randn(n, self.n_latent, device=self._device_anchor.device)


def _flat_components(q: MixtureNormal) -> tuple[torch.Tensor, torch.Tensor]:
    """Every component of every pseudo-input as one list of Gaussians, ``[S * K, D]`` each."""
    n_latent = q.component_loc.shape[-1]
    return q.component_loc.reshape(-1, n_latent), q.component_scale.reshape(-1, n_latent)


class VampPrior(nn.Module):
    r"""VampPrior through a mixture encoder: :math:`\frac{1}{SK}\sum_{s,k} q_s(z \mid u_k)`.

    Parameters
    ----------
    pseudo_inputs
        Initial pseudo-inputs ``[K, n_in]``, in the encoder's input space (learned).
    encode
        ``encode(pseudo_inputs) -> MixtureNormal [S, K, D]``: the model's own encoder applied
        to the pseudo-inputs (with whatever the domain adds: clamping, fixed covariates). Give
        a bound method of the owning module, or a plain object holding its encoder: the
        encoder is then not registered twice in the state dict, and a deep copy of the owner
        encodes with its own copy of the encoder.

    Notes
    -----
    :meth:`log_prob` accepts the pseudo-inputs' posterior computed elsewhere
    (``pseudo_posterior``): a count model encodes the pseudo-inputs in the same pass as its
    minibatch, so that batch normalisation sees them with the data's statistics.
    """

    closed_form_kl = False

    def __init__(
        self, pseudo_inputs: torch.Tensor, encode: Callable[[torch.Tensor], MixtureNormal]
    ):
        super().__init__()
        if pseudo_inputs.dim() != 2 or pseudo_inputs.shape[0] < 1:
            raise ValueError(
                "pseudo_inputs must have shape [K, n_in] with K >= 1, got "
                f"{tuple(pseudo_inputs.shape)}."
            )
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.detach().clone())
        self._encode = encode

    @property
    def n_prior_components(self) -> int:
        """``K``, the number of pseudo-inputs."""
        return self.pseudo_inputs.shape[0]

    def posterior(self) -> MixtureNormal:
        """The mixture posterior of the pseudo-inputs, ``[S, K, D]``."""
        return self._encode(self.pseudo_inputs)

    def log_prob(
        self, z: torch.Tensor, pseudo_posterior: MixtureNormal | None = None
    ) -> torch.Tensor:
        """``z [..., D]`` -> ``[...]``; ``pseudo_posterior`` as :meth:`posterior` returns it."""
        q = self.posterior() if pseudo_posterior is None else pseudo_posterior
        loc, scale = _flat_components(q)
        log_probs = gaussian_log_prob_matrix(z.reshape(-1, z.shape[-1]), loc, scale)
        return (torch.logsumexp(log_probs, -1) - math.log(loc.shape[0])).view(z.shape[:-1])

    def sample(self, n: int) -> torch.Tensor:
        """``[n, D]``: a component of a pseudo-input chosen uniformly, then a draw from it."""
        loc, scale = _flat_components(self.posterior())
        index = torch.randint(loc.shape[0], (n,), device=loc.device)
        return loc[index] + scale[index] * torch.randn_like(loc[index])


class MixtureOfGaussiansPrior(nn.Module):
    r"""A learned mixture of ``K`` diagonal Gaussians, :math:`\sum_k \pi_k \mathcal{N}(\mu_k,
    \operatorname{diag}\sigma_k^2)`, with learned weights (MrVI's ``"mog"`` prior).

    Means start as draws of :math:`\mathcal{N}(0, I)` and scales at one, so the prior starts
    near the standard normal and the components separate as training needs.
    """

    closed_form_kl = False

    def __init__(self, n_latent: int, n_prior_components: int):
        super().__init__()
        validate_prior("mog", n_prior_components)
        self.loc = nn.Parameter(torch.randn(n_prior_components, n_latent))
        self.log_scale = nn.Parameter(torch.zeros(n_prior_components, n_latent))
        self.logits = nn.Parameter(torch.zeros(n_prior_components))

    @property
    def n_prior_components(self) -> int:
        """``K``."""
        return self.loc.shape[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., D]`` -> ``[...]``."""
        log_probs = gaussian_log_prob_matrix(
            z.reshape(-1, z.shape[-1]), self.loc, self.log_scale.exp()
        )
        log_w = torch.log_softmax(self.logits, -1)
        return torch.logsumexp(log_probs + log_w, -1).view(z.shape[:-1])

    def sample(self, n: int) -> torch.Tensor:
        """``[n, D]``."""
        index = torch.distributions.Categorical(logits=self.logits).sample((n,))
        loc, scale = self.loc[index], self.log_scale[index].exp()
        return loc + scale * torch.randn_like(loc)
