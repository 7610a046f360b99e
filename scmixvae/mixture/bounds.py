r"""The estimator core: every bound, divergence and importance weight of a mixture posterior.

Both data domains reduce a training step to the same per-draw quantities, collected in
:class:`DrawTerms`: for ``L`` draws from each of ``A`` components per observation (``A = S``:
every component, the stratified estimator; ``A < S``: a random subset), the log-likelihood, the
log-prior, the density of the whole ``S``-mixture, the density of the drawing component, and
which component drew. Everything else is a function of those terms:

* :func:`bound` — MISELBO (``"miselbo"``), the components' mean ELBO (``"ensemble"``) or the
  MISELBO of the drawn sub-mixture (``"some_to_some"``), in the averaged or importance-weighted
  form, with a KL warm-up factor;
* :func:`kl_term` — the part of the bound multiplied by the warm-up factor;
* :func:`jsd` — the generalized Jensen–Shannon divergence of the components;
* :func:`log_weights` — importance log-weights with the mixture as proposal;
* :func:`accumulate_log_weights` and :func:`log_likelihood_from_sums` — the held-out
  :math:`\log p(x)` estimate by importance sampling with the mixture as proposal.

The bounds per observation (higher is better), with :math:`\mathcal{A}` the drawn components:

.. math::
    \mathcal{L} = \frac{1}{A} \sum_{a \in \mathcal{A}} \mathbb{E}_{z \sim q_a}
    \big[\log p(x \mid z) + \beta (\log p(z) - \log r(z))\big],

where the denominator :math:`r` is the whole mixture :math:`q_{\mathrm{mix}} = \frac1S \sum_j
q_j` for ``"miselbo"``, the drawing component :math:`q_a` for ``"ensemble"``, and the
sub-mixture :math:`\frac1A \sum_{a' \in \mathcal{A}} q_{a'}` for ``"some_to_some"``.

With ``A = S`` the draws are stratified and ``"miselbo"`` is the MISELBO of Kviman et al.
(2023). With ``A < S`` and components drawn uniformly without replacement, ``"miselbo"`` is
*Some-to-All* (Hotti et al., 2024): an unbiased estimate of the same MISELBO at ``A / S`` of the
decoder cost, because each component is drawn with probability ``A / S``. ``"some_to_some"`` is
the MISELBO of a random ``A``-component sub-mixture: each such value bounds :math:`\log p(x)`,
and its expectation lies *below* the full MISELBO (the entropy of the full mixture, the
average of the sub-mixtures, is at least their average entropy), with equality at ``A = S``
and the ensemble's mean ELBO at ``A = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

Objective = Literal["miselbo", "ensemble", "some_to_some"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
DEFAULT_OBJECTIVE: Objective = "miselbo"  # the method's bound; the others are baselines
NLLEstimator = Literal["mixture", "per_component"]


def validate_objective(objective: str) -> Objective:
    """Return ``objective`` if it names a bound, else raise :class:`ValueError` listing them."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {', '.join(map(repr, OBJECTIVES))}; got {objective!r}."
        )
    return objective  # type: ignore[return-value]


def log_mean_exp(x: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """Numerically stable :math:`\\log \\operatorname{mean} \\exp` over ``dim``."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    count = math.prod(x.shape[d] for d in dims)
    return torch.logsumexp(x, dim=dims) - math.log(count)


@dataclass
class DrawTerms:
    """Log densities at the draws of one step, each ``[L, A, B]``.

    ``L`` draws from each of ``A`` components per observation, ``B`` observations.

    Attributes
    ----------
    log_px_z
        :math:`\\log p(x \\mid z)` (and any other latent's log-ratio folded into the likelihood).
        ``None`` when only posterior quantities (:func:`jsd`) are needed.
    log_pz
        :math:`\\log p(z)`; ``None`` as ``log_px_z``.
    log_q_mix
        Density of the whole ``S``-component mixture.
    log_q_own
        Density of the component that drew the draw.
    component
        ``[A, B]``: which of the ``S`` components drew each draw.
    n_components
        ``S``.
    log_q_sub
        Density of the uniform mixture of the ``A`` drawn components (``"some_to_some"`` only).
    kl_own
        ``[A, B]``: closed-form :math:`\\mathrm{KL}(q_a \\,\\|\\, p)` of each drawn component,
        where the prior allows one. When the denominator is the drawing component alone it replaces
        the Monte Carlo KL, as scVI does, so a single component is exactly scVI's loss.
    """

    log_q_mix: torch.Tensor
    log_q_own: torch.Tensor
    component: torch.Tensor
    n_components: int
    log_px_z: torch.Tensor | None = None
    log_pz: torch.Tensor | None = None
    log_q_sub: torch.Tensor | None = None
    kl_own: torch.Tensor | None = None

    @property
    def n_sampled_components(self) -> int:
        """``A``, the components drawn per observation."""
        return self.log_q_mix.shape[-2]

    def _model_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log_px_z is None or self.log_pz is None:
            raise ValueError("these terms hold no log p(x | z) and log p(z): no bound to compute.")
        return self.log_px_z, self.log_pz

    def _denominator_is_own(self, objective: Objective) -> bool:
        """Whether the bound's denominator is the drawing component's own density."""
        return (
            objective == "ensemble"
            or self.n_components == 1
            or (objective == "some_to_some" and self.n_sampled_components == 1)
        )

    def denominator(self, objective: Objective) -> torch.Tensor:
        """``log r(z)`` of the objective at every draw, ``[L, A, B]``."""
        objective = validate_objective(objective)
        if self._denominator_is_own(objective):
            return self.log_q_own
        if objective == "miselbo":
            return self.log_q_mix
        if self.log_q_sub is None:
            raise ValueError(
                "the 'some_to_some' objective needs log_q_sub, the drawn sub-mixture's density."
            )
        return self.log_q_sub


def mixture_densities(
    log_q_components: torch.Tensor, component: torch.Tensor, with_sub_mixture: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The three denominators of :class:`DrawTerms` from every component's density at the draws.

    Parameters
    ----------
    log_q_components
        ``[L, A, S, B]``: :math:`\\log q_j(z)` of every component ``j`` at every draw.
    component
        ``[A, B]``: the component that drew each draw.
    with_sub_mixture
        Also return the density of the mixture of the ``A`` drawn components.

    Returns
    -------
    ``(log_q_mix, log_q_own, log_q_sub)``, each ``[L, A, B]`` (``log_q_sub`` may be ``None``).
    """
    n_draws, n_sampled, n_components, n_obs = log_q_components.shape
    if component.shape != (n_sampled, n_obs):
        raise ValueError(
            f"component must have shape [A, B] = {[n_sampled, n_obs]}, got "
            f"{list(component.shape)}."
        )
    log_q_mix = torch.logsumexp(log_q_components, dim=-2) - math.log(n_components)
    own_index = component.view(1, n_sampled, 1, n_obs).expand(n_draws, -1, -1, -1)
    log_q_own = log_q_components.gather(-2, own_index).squeeze(-2)
    log_q_sub = None
    if with_sub_mixture:
        drawn = component.view(1, 1, n_sampled, n_obs).expand(n_draws, n_sampled, -1, -1)
        log_q_sub = log_mean_exp(log_q_components.gather(-2, drawn), dim=-2)
    return log_q_mix, log_q_own, log_q_sub


def kl_term(terms: DrawTerms, objective: Objective) -> torch.Tensor:
    r"""The bound's KL part :math:`\mathbb{E}[\log r(z) - \log p(z)]` per observation, ``[B]``.

    Closed form (``terms.kl_own``) when the denominator is the drawing component alone and the
    closed form is available; otherwise the Monte Carlo average over the draws.
    """
    objective = validate_objective(objective)
    if terms.kl_own is not None and terms._denominator_is_own(objective):
        return terms.kl_own.mean(0)
    _, log_pz = terms._model_terms()
    return (terms.denominator(objective) - log_pz).mean(dim=(0, 1))


def bound(
    terms: DrawTerms,
    objective: Objective = "miselbo",
    beta: float | torch.Tensor = 1.0,
    importance_weighted: bool = False,
) -> torch.Tensor:
    r"""The objective's bound per observation, ``[B]`` (higher is better).

    Parameters
    ----------
    terms
        Log densities at the draws.
    objective
        ``"miselbo"``, ``"ensemble"`` or ``"some_to_some"`` (see the module docstring).
    beta
        KL warm-up factor multiplying :math:`\log p(z) - \log r(z)`.
    importance_weighted
        Combine the ``L`` draws of each component with a log-mean-exp (IWAE form) before
        averaging over components; the Monte Carlo KL is then always used.

    Returns
    -------
    ``[B]``. With one component every objective is the standard ELBO.
    """
    objective = validate_objective(objective)
    log_px_z, log_pz = terms._model_terms()
    if importance_weighted:
        log_w = log_px_z + beta * (log_pz - terms.denominator(objective))
        return log_mean_exp(log_w, dim=0).mean(0)
    return log_px_z.mean(dim=(0, 1)) - beta * kl_term(terms, objective)


def jsd(terms: DrawTerms) -> torch.Tensor:
    r"""Generalized Jensen–Shannon divergence of the components per observation, ``[B]``.

    .. math:: \mathrm{JSD} = \frac1S \sum_s \mathbb{E}_{z \sim q_s}
              \big[\log q_s(z) - \log q_{\mathrm{mix}}(z)\big] \in [0, \log S]

    It is exactly the gap MISELBO − ensemble ELBO on the same draws (at ``beta = 1``, averaged
    form): 0 when all components coincide, ``log S`` when they do not overlap. With sampled
    components it is an unbiased estimate, as the bound is.
    """
    return (terms.log_q_own - terms.log_q_mix).mean(dim=(0, 1))


def log_weights(terms: DrawTerms) -> torch.Tensor:
    r"""Importance log-weights :math:`\log p(x, z) - \log q_{\mathrm{mix}}(z \mid x)`.

    Returns
    -------
    ``[L, A, B]``.
    """
    log_px_z, log_pz = terms._model_terms()
    return log_px_z + log_pz - terms.log_q_mix


def accumulate_log_weights(
    log_weight_fn: Callable[[int], torch.Tensor],
    n_samples_per_component: int,
    chunk_size: int = 100,
) -> torch.Tensor:
    r"""Log-sum-exp of stratified importance log-weights over draws, per component.

    Parameters
    ----------
    log_weight_fn
        ``log_weight_fn(k)`` draws ``k`` samples from every component and returns their
        log-weights (:func:`log_weights`), shape ``[k, S, B]``.
    n_samples_per_component
        Total draws per component ``K``, produced ``chunk_size`` at a time.
    chunk_size
        Draws per component per call of ``log_weight_fn`` (the memory bound).

    Returns
    -------
    ``[S, B]``: :math:`\log \sum_k w_{s,k}`; finish with :func:`log_likelihood_from_sums` or
    :func:`~scmixvae.mixture.component_responsibilities`.
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
