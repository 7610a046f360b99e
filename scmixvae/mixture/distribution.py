"""The uniform mixture of diagonal Gaussians used as the variational posterior."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch.distributions import Distribution, Normal, constraints, kl_divergence

from .bounds import DrawTerms, mixture_densities


def gaussian_log_prob_matrix(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Log densities of ``N`` points under ``M`` diagonal Gaussians, ``[N, M]``.

    Expands the squared Mahalanobis distance into three matrix products, so no ``[N, M, D]``
    tensor is formed (the VampPrior evaluates every draw against ``S x K`` Gaussians).

    Parameters
    ----------
    z
        ``[N, D]``.
    loc, scale
        ``[M, D]``.
    """
    precision = scale.pow(-2)
    quadratic = (
        z.square() @ precision.T - 2 * z @ (loc * precision).T + (loc.square() * precision).sum(-1)
    )
    log_norm = scale.log().sum(-1) + 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return -0.5 * quadratic - log_norm


def sample_components(
    n_components: int,
    n_sampled_components: int | None,
    n_obs: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which components draw for each observation, ``[A, B]``.

    Parameters
    ----------
    n_components
        ``S``.
    n_sampled_components
        ``A``. ``None`` or ``S``: every component, in order (the stratified estimator, with no
        randomness). ``1 <= A < S``: ``A`` distinct components per observation, drawn uniformly
        and independently for every observation.
    n_obs
        ``B``.
    """
    if n_sampled_components is None or n_sampled_components == n_components:
        return torch.arange(n_components, device=device).unsqueeze(1).expand(-1, n_obs)
    if not 1 <= n_sampled_components <= n_components:
        raise ValueError(
            f"n_sampled_components must be in [1, n_components={n_components}], got "
            f"{n_sampled_components}."
        )
    # the A smallest of S uniform keys are a uniformly random A-subset
    keys = torch.rand(n_components, n_obs, device=device)
    return keys.topk(n_sampled_components, dim=0, largest=False, sorted=False).indices


def _as_size(sample_shape: int | tuple[int, ...] | torch.Size) -> torch.Size:
    if isinstance(sample_shape, int):
        return torch.Size((sample_shape,))
    return torch.Size(sample_shape)


class MixtureNormal(Distribution):
    r"""Uniform mixture of ``S`` diagonal Gaussians, one per encoder.

    .. math::
        q_{\mathrm{mix}}(z \mid x) = \frac{1}{S} \sum_{j=1}^{S} \mathcal{N}(z; \mu_j(x),
        \operatorname{diag} \sigma_j^2(x))

    The weights are fixed to ``1/S`` by design: learned weights collapse onto one component.

    The object is usable where scvi-tools expects ``qz``: :attr:`loc` is the mixture mean and
    :attr:`scale` the square root of the mixture's marginal variance. Unlike
    :class:`torch.distributions.Normal`, :meth:`log_prob` returns the density of the whole latent
    vector (summed over the latent dimension), because a mixture does not factorise over
    dimensions.

    The components are held component-major (``[S, B, D]``, the layout of the batched
    computations); the declared parameters (:attr:`arg_constraints`, what
    ``type(q)(**params)`` rebuilds from) are the same values in torch's batch-first layout,
    ``cell_loc`` and ``cell_scale`` of shape ``[B, S, D]``, so tools that split or concatenate
    distributions along the observation axis (scvi-tools' ``DistributionConcatenator``,
    ``subset_distribution``) handle a mixture correctly.

    Parameters
    ----------
    component_loc
        Component means, shape ``[S, B, D]``.
    component_scale
        Component standard deviations, shape ``[S, B, D]``.
    cell_loc, cell_scale
        The same, batch-first (``[B, S, D]``); give these or the two above.

    Examples
    --------
    >>> q = MixtureNormal(torch.zeros(3, 8, 2), torch.ones(3, 8, 2))
    >>> z = q.rsample(4)  # four draws from every component
    >>> z.shape
    torch.Size([4, 3, 8, 2])
    >>> q.log_prob(z).shape
    torch.Size([4, 3, 8])
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "cell_loc": constraints.real,
        "cell_scale": constraints.positive,
    }
    has_rsample = True

    def __init__(
        self,
        component_loc: torch.Tensor | None = None,
        component_scale: torch.Tensor | None = None,
        *,
        cell_loc: torch.Tensor | None = None,
        cell_scale: torch.Tensor | None = None,
    ):
        if (component_loc is None) == (cell_loc is None):
            raise ValueError("give either component_loc/component_scale or cell_loc/cell_scale.")
        if cell_loc is not None:
            component_loc, component_scale = cell_loc.movedim(-2, 0), cell_scale.movedim(-2, 0)
        if component_loc.dim() < 2:
            raise ValueError(
                "component_loc must have shape [S, ..., D] with a leading component axis, "
                f"got shape {tuple(component_loc.shape)}."
            )
        if component_loc.shape != component_scale.shape:
            raise ValueError(
                f"component_loc {tuple(component_loc.shape)} and component_scale "
                f"{tuple(component_scale.shape)} must have the same shape."
            )
        self.component_loc = component_loc
        self.component_scale = component_scale
        super().__init__(
            batch_shape=component_loc.shape[1:-1],
            event_shape=component_loc.shape[-1:],
            validate_args=False,
        )

    @property
    def cell_loc(self) -> torch.Tensor:
        """Component means, batch-first: ``[B, S, D]``."""
        return self.component_loc.movedim(0, -2)

    @property
    def cell_scale(self) -> torch.Tensor:
        """Component standard deviations, batch-first: ``[B, S, D]``."""
        return self.component_scale.movedim(0, -2)

    @property
    def n_components(self) -> int:
        """Number of mixture components ``S``."""
        return self.component_loc.shape[0]

    # moments ---------------------------------------------------------------------------------
    @property
    def loc(self) -> torch.Tensor:
        """Mixture mean, shape ``[B, D]``."""
        # one memory layout for the sum over components, whichever way the components were
        # built (encoder output or a minified AnnData's stored table), so equal parameters
        # give a bit-identical mean; no copy when they are already component-major
        return self.component_loc.contiguous().mean(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        """Marginal variance of each latent dimension, ``[B, D]`` (law of total variance)."""
        within = self.component_scale.contiguous().square().mean(0)
        between = self.component_loc.contiguous().var(0, unbiased=False)
        return within + between

    @property
    def scale(self) -> torch.Tensor:
        """Marginal standard deviation of each latent dimension, ``[B, D]``."""
        return self.variance.sqrt()

    @property
    def stddev(self) -> torch.Tensor:
        return self.scale

    # components ------------------------------------------------------------------------------
    def component(self, k: int) -> Normal:
        """Component ``k`` as a :class:`~torch.distributions.Normal` with shape ``[B, D]``."""
        return Normal(self.component_loc[k], self.component_scale[k])

    # sampling --------------------------------------------------------------------------------
    def rsample(self, sample_shape: int | tuple[int, ...] | torch.Size = ()) -> torch.Tensor:
        """Reparameterised draws stratified over components.

        Every component draws ``sample_shape`` samples of its own, which is what MISELBO
        averages over.

        Returns
        -------
        Tensor of shape ``[*sample_shape, S, B, D]``.
        """
        shape = _as_size(sample_shape) + self.component_loc.shape
        eps = torch.randn(shape, dtype=self.component_loc.dtype, device=self.component_loc.device)
        return self.component_loc + eps * self.component_scale

    def sample(self, sample_shape: int | tuple[int, ...] | torch.Size = ()) -> torch.Tensor:
        """Stratified draws without gradients; see :meth:`rsample`."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_components(
        self, component: torch.Tensor, sample_shape: int | tuple[int, ...] | torch.Size = ()
    ) -> torch.Tensor:
        """Reparameterised draws from chosen components.

        Parameters
        ----------
        component
            ``[A, B]`` from :func:`sample_components`.
        sample_shape
            Draws per chosen component.

        Returns
        -------
        ``[*sample_shape, A, B, D]``. With every component in order it is :meth:`rsample`,
        draw for draw.
        """
        loc, scale = self.gather_components(component)
        eps = torch.randn(_as_size(sample_shape) + loc.shape, dtype=loc.dtype, device=loc.device)
        return loc + eps * scale

    def gather_components(self, component: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of the chosen components, each ``[A, B, D]``."""
        index = component.unsqueeze(-1).expand(*component.shape, self.component_loc.shape[-1])
        return self.component_loc.gather(0, index), self.component_scale.gather(0, index)

    def draw_terms(
        self,
        z: torch.Tensor,
        component: torch.Tensor,
        log_px_z: torch.Tensor | None = None,
        log_pz: torch.Tensor | None = None,
        with_sub_mixture: bool = False,
        kl_own: torch.Tensor | None = None,
    ) -> DrawTerms:
        """The posterior's densities at draws ``z [L, A, B, D]`` from ``component [A, B]``.

        The model's terms (``log_px_z``, ``log_pz``, ``[L, A, B]``) are passed through; see
        :class:`~scmixvae.mixture.DrawTerms`.
        """
        log_q_mix, log_q_own, log_q_sub = mixture_densities(
            self.component_log_prob(z), component, with_sub_mixture
        )
        return DrawTerms(
            log_q_mix=log_q_mix,
            log_q_own=log_q_own,
            component=component,
            n_components=self.n_components,
            log_px_z=log_px_z,
            log_pz=log_pz,
            log_q_sub=log_q_sub,
            kl_own=kl_own,
        )

    def kl_to_standard_normal(self, component: torch.Tensor) -> torch.Tensor:
        r"""Closed-form KL of each chosen component to :math:`\mathcal{N}(0, I)`, ``[A, B]``."""
        loc, scale = self.gather_components(component)
        prior = Normal(torch.zeros_like(loc), torch.ones_like(scale))
        return kl_divergence(Normal(loc, scale), prior).sum(-1)

    def sample_mixture(
        self, sample_shape: int | tuple[int, ...] | torch.Size = ()
    ) -> torch.Tensor:
        """Ancestral draws from the mixture: pick a component uniformly, then draw from it.

        Returns
        -------
        Tensor of shape ``[*sample_shape, B, D]``, distributed as :math:`q_{\\mathrm{mix}}`.
        """
        shape = _as_size(sample_shape)
        n_components = self.n_components
        index = torch.randint(
            n_components, shape + self.batch_shape, device=self.component_loc.device
        )
        # gather the chosen component's parameters without looping over components
        loc = self.component_loc.movedim(0, -1)  # [B, D, S]
        scale = self.component_scale.movedim(0, -1)
        index = index.unsqueeze(-1).unsqueeze(-1).expand(*index.shape, loc.shape[-2], 1)
        loc = torch.gather(loc.expand(*shape, *loc.shape), -1, index).squeeze(-1)
        scale = torch.gather(scale.expand(*shape, *scale.shape), -1, index).squeeze(-1)
        with torch.no_grad():
            return loc + torch.randn_like(loc) * scale

    # densities -------------------------------------------------------------------------------
    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of every component at ``z``.

        Parameters
        ----------
        z
            Points of shape ``[..., B, D]``; stratified draws ``[L, S, B, D]`` are fine.

        Returns
        -------
        Tensor of shape ``[..., S, B]``: entry ``j`` is :math:`\\log q_j(z)`.
        """
        z = z.unsqueeze(-3)
        # one standardised difference and a contraction over D: the [..., S, B, D] temporaries
        # dominate large mixtures, so as few full-size passes as possible
        standardized = (z - self.component_loc) / self.component_scale
        squared = torch.einsum("...d,...d->...", standardized, standardized)
        log_norm = self.component_scale.log().sum(-1) + 0.5 * z.shape[-1] * math.log(2 * math.pi)
        return -0.5 * squared - log_norm

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""Log density of the uniform mixture, :math:`\log \frac1S \sum_j q_j(z)`.

        Parameters
        ----------
        z
            Points of shape ``[..., B, D]``.

        Returns
        -------
        Tensor of shape ``[..., B]``.
        """
        return torch.logsumexp(self.component_log_prob(z), dim=-2) - math.log(self.n_components)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Posterior probability of each component having produced ``z``, ``[..., S, B]``."""
        return torch.softmax(self.component_log_prob(z), dim=-2)

    def __repr__(self) -> str:
        s, *batch, d = self.component_loc.shape
        return f"MixtureNormal(n_components={s}, batch_shape={tuple(batch)}, n_latent={d})"
