"""Per-cell diagnostics of a mixture posterior, shared by every scmixvae model class.

:class:`MixtureDiagnosticsMixin` needs what :class:`~.mixture_model.MixtureModelMixin`
provides (``_mixtures``, ``_minibatches``, ``get_latent_representation``, ``get_marginal_ll``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from scmixvae.mixture import (
    FlowTransform,
    MixtureNormal,
    component_responsibilities,
    jsd,
    sample_components,
)

from .importance import (
    importance_log_weights,
    likelihood_at_library,
    mixture_log_density_matrix,
)

DiagnosticMethod = Literal["means", "importance"]
# bound on the [draws, S, S, cells, latent] temporary of the divergence estimate
DIVERGENCE_ELEMENTS = 20_000_000


class MixtureDiagnosticsMixin:
    """Uncertainty, responsibilities and divergence of the components, per cell."""

    @torch.inference_mode()
    def get_posterior_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-cell posterior uncertainty: trace of the mixture's covariance, ``(n_cells,)``.

        It includes the spread between component means, so cells on which the components
        disagree come out uncertain even when each component is confident.
        """
        traces = [
            qz.variance.sum(-1).cpu() for _, qz in self._mixtures(adata, indices, batch_size)
        ]
        return torch.cat(traces).numpy()

    @torch.inference_mode()
    def get_component_responsibilities(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        method: DiagnosticMethod = "importance",
        n_samples_per_component: int = 10,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""How much each component accounts for each cell, ``(n_cells, S)``, rows summing to one.

        Parameters
        ----------
        adata, indices, batch_size
            As :meth:`get_latent_representation`.
        method
            ``"importance"``: each component's share of the cell's importance-sampled
            likelihood (:func:`scmixvae.mixture.component_responsibilities`): the components
            whose draws explain the counts get the mass. Costs ``n_samples_per_component * S``
            decoder passes per cell. ``"means"``: the components' posterior probabilities at the
            cell's mixture mean, :math:`q_s(\bar z) / \sum_j q_j(\bar z)`, in closed form with no
            decoding (seconds for 10^4 cells): which component covers the cell's consensus
            latent position. The two answer different questions and often name different
            dominant components.
        n_samples_per_component
            Importance samples drawn from each component per cell (``"importance"`` only).

        Returns
        -------
        ``(n_cells, S)``. Uniform rows mean the components agree on the cell.
        """
        _check_method(method)
        self._check_if_trained(warn=False)
        self.module.eval()
        if method == "means":
            out = [
                qz.responsibilities(qz.loc).T.cpu()
                for _, qz in self._mixtures(adata, indices, batch_size)
            ]
            return torch.cat(out).numpy()
        out = []
        for tensors in self._minibatches(adata, indices, batch_size):
            sums = self.module.log_weight_sums(tensors, n_samples_per_component)
            out.append(component_responsibilities(sums).T.cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def get_component_divergence(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        method: DiagnosticMethod = "importance",
        n_samples_per_component: int = 50,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Per-cell generalized Jensen–Shannon divergence of the components, ``(n_cells,)``.

        Equal to MISELBO − mean component ELBO; in ``[0, log S]``. Near 0 the components
        coincide (the mixture adds nothing); near ``log S`` they do not overlap.

        Parameters
        ----------
        method
            ``"importance"``: Monte Carlo over ``n_samples_per_component`` draws of every
            component (:func:`scmixvae.mixture.jsd`). ``"means"``: the same expectation with
            each component's draws replaced by its mean,
            :math:`\frac1S \sum_s [\log q_s(\mu_s) - \log q_{mix}(\mu_s)]`, closed form, also
            in ``[0, log S]``; it exceeds the Monte Carlo value where components are narrow.
            Neither decodes.
        """
        _check_method(method)
        out = []
        for _, qz in self._mixtures(adata, indices, batch_size):
            n_cells, n_latent = qz.component_loc.shape[1:]
            component = sample_components(self.n_components, None, n_cells, qz.loc.device)
            if method == "means":
                out.append(jsd(qz.draw_terms(qz.component_loc.unsqueeze(0), component)).cpu())
                continue
            # every draw is scored under all S components: bound the [k, S, S, B, D] temporary
            per_pass = max(1, DIVERGENCE_ELEMENTS // (self.n_components**2 * n_cells * n_latent))
            total, remaining = torch.zeros(n_cells, device=qz.loc.device), n_samples_per_component
            while remaining > 0:
                k = min(per_pass, remaining)
                z = qz.rsample_components(component, k)
                total += jsd(qz.draw_terms(z, component)) * k
                remaining -= k
            out.append((total / n_samples_per_component).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def get_aggregated_posterior(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dof: float | None = None,
    ) -> torch.distributions.Distribution:
        r"""The aggregated posterior :math:`\frac1N \sum_n q(z \mid x_n)`, as SCVI's method.

        With mixture posteriors it is the uniform mixture of every component of every cell
        (``n_cells * S`` Gaussians, or Student-t with ``dof`` degrees of freedom), used by
        :meth:`differential_abundance`. With a latent flow it is that mixture pushed through
        the flow (a :class:`~torch.distributions.TransformedDistribution`: its densities invert
        the flow), in the space :meth:`get_latent_representation` returns.
        """
        self._check_if_trained(warn=False)
        indices = None if indices is None or len(indices) == 0 else indices
        loc, var = self._base_components(adata, indices, batch_size)
        loc = torch.as_tensor(loc.reshape(-1, loc.shape[-1]), device=self.device)
        scale = torch.as_tensor(var.reshape(-1, var.shape[-1]), device=self.device).sqrt()
        dist = torch.distributions
        components = dist.Normal(loc, scale) if dof is None else dist.StudentT(dof, loc, scale)
        aggregated = dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(loc.shape[0], device=self.device)),
            dist.Independent(components, 1),
        )
        if self.module.flow is None:
            return aggregated
        # the same flow maps every component: the aggregate is the base aggregate, flowed
        return dist.TransformedDistribution(aggregated, [FlowTransform(self.module.flow)])

    @torch.inference_mode()
    def get_importance_weights(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        qz=None,
        px=None,
        zs: torch.Tensor | None = None,
        max_cells: int = 1024,
        truncation: bool = False,
        n_mc_samples: int = 500,
        n_mc_samples_per_pass: int = 250,
        **data_loader_kwargs,
    ) -> np.ndarray:
        """Importance weights of posterior draws, for ``weights="importance"`` in expression / DE.

        As :meth:`scvi.model.SCVI.get_importance_weights`, with each anchor cell's mixture
        posterior as its proposal density (see :mod:`scmixvae.singlecell.importance`), the
        model's own prior for :math:`p(z)` and, with a latent flow, the flowed densities. ``qz``
        as scvi-tools collects it is not used: the anchors are re-encoded, cell-major.
        """
        if self.module.latent_distribution != "normal":
            raise NotImplementedError(
                "importance weights need latent_distribution='normal' (a Gaussian latent)."
            )
        indices = np.arange(self._validate_anndata(adata).n_obs) if indices is None else indices
        indices = np.asarray(indices)
        z = zs.reshape(-1, zs.shape[-1]).to(self.device)  # [n_draws, D], draw-major
        anchors = np.arange(len(indices))
        if len(indices) > max_cells:
            anchors = np.random.choice(anchors, size=max_cells, replace=False)  # noqa: NPY002
        log_px = torch.as_tensor(
            self.get_marginal_ll(
                adata, indices=indices[anchors], return_mean=False, n_mc_samples=n_mc_samples,
                n_mc_samples_per_pass=n_mc_samples_per_pass,
            ),
        ).reshape(-1)  # fmt: skip
        anchor_qz = [qz_ for _, qz_ in self._mixtures(adata, indices[anchors], None)]
        anchor_mixture = MixtureNormal(
            torch.cat([q.component_loc for q in anchor_qz], dim=1),
            torch.cat([q.component_scale for q in anchor_qz], dim=1),
        )
        if self.module.flow is None:
            log_qz = mixture_log_density_matrix(anchor_mixture, z).cpu()
        else:  # every anchor's density of z = f(z0): at f^-1(z), less the log-determinant
            z0, log_det = self.module.flow.inverse(z)
            log_qz = (mixture_log_density_matrix(anchor_mixture, z0) - log_det[:, None]).cpu()
        log_px_z = []
        for tensors in self._make_data_loader(
            adata=adata, indices=indices[anchors], batch_size=1, **data_loader_kwargs
        ):
            x_anchor = tensors[REGISTRY_KEYS.X_KEY].to(self.device)  # [1, G]
            likelihood = likelihood_at_library(px, self.module.gene_likelihood, x_anchor.sum(-1))
            log_px_z.append(likelihood.log_prob(x_anchor).sum(-1).reshape(-1).cpu())
        return importance_log_weights(
            self.module.latent_log_prior(z).cpu(), torch.stack(log_px_z, dim=1), log_px, log_qz,
            truncation,
        )  # fmt: skip


def _check_method(method: str) -> None:
    if method not in ("means", "importance"):
        raise ValueError(f"method must be 'means' or 'importance', got {method!r}.")
