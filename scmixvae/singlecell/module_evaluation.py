"""Held-out likelihood of a mixture module: importance weights with the mixture as proposal.

:class:`MixtureEvaluationMixin` is a base of :class:`~scmixvae.singlecell.module.MixVAE`; it
needs the module's ``forward`` (stratified draws), ``draw_terms`` and ``n_components``.
"""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.module._constants import MODULE_KEYS

from scmixvae.mixture import (
    NLLEstimator,
    accumulate_log_weights,
    log_likelihood_from_sums,
    log_weights,
)

from .module_options import MAX_ELEMENTS_PER_PASS, _cell_chunks


class MixtureEvaluationMixin:
    """Importance-sampled :math:`\\log p(x)` of a mixture module, in bounded-memory passes."""

    @torch.inference_mode()
    def log_importance_weights(self, tensors: dict[str, torch.Tensor], n_per_component: int):
        """Log-weights ``log p(x, z, l) - log q_mix(z | x) q(l | x)``, ``[K, S, B]``.

        Draws are stratified over all ``S`` components, ``n_per_component`` from each; the
        mixture is the proposal.
        """
        inference_outputs, generative_outputs = self.forward(
            tensors,
            inference_kwargs={
                "n_samples": n_per_component,
                "stratified": True,
                "n_sampled_components": None,
            },
            compute_loss=False,
        )
        device = inference_outputs[MODULE_KEYS.Z_KEY].device
        tensors = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                   for k, v in tensors.items()}  # fmt: skip
        terms = self.draw_terms(
            tensors, inference_outputs, generative_outputs, include_library=True
        )
        return log_weights(terms)

    @torch.inference_mode()
    def log_weight_sums(
        self,
        tensors: dict[str, torch.Tensor],
        n_per_component: int,
        n_per_pass: int | None = None,
    ) -> torch.Tensor:
        """Per component, the log-sum of ``n_per_component`` importance weights, ``[S, B]``.

        The work is split into passes of at most ``MAX_ELEMENTS_PER_PASS`` decoded values
        (draws x cells x genes): ``n_per_pass`` draws per component at a time (default: as many
        as fit), and fewer cells at a time when even one draw per component does not fit.
        """
        n_genes = tensors[REGISTRY_KEYS.X_KEY].shape[1]
        cells_per_pass = max(1, MAX_ELEMENTS_PER_PASS // (self.n_components * n_genes))
        sums = []
        for chunk in _cell_chunks(tensors, cells_per_pass):
            n_chunk = chunk[REGISTRY_KEYS.X_KEY].shape[0]
            per_pass = n_per_pass or max(
                1, MAX_ELEMENTS_PER_PASS // (self.n_components * n_chunk * n_genes)
            )
            sums.append(
                accumulate_log_weights(
                    lambda k, chunk=chunk: self.log_importance_weights(chunk, k),
                    n_per_component,
                    chunk_size=per_pass,
                )
            )
        return torch.cat(sums, dim=1)

    @torch.inference_mode()
    def marginal_ll(
        self,
        tensors: dict[str, torch.Tensor],
        n_mc_samples: int,
        return_mean: bool = False,
        n_mc_samples_per_pass: int | None = None,
        estimator: NLLEstimator = "mixture",
    ) -> torch.Tensor | float:
        """Importance-sampled :math:`\\log p(x)` with the mixture as proposal.

        Parameters
        ----------
        tensors
            A minibatch.
        n_mc_samples
            Total number of importance samples per cell, split evenly over the ``S``
            components (at least one each).
        return_mean
            Return the mean over cells as a float.
        n_mc_samples_per_pass
            Samples per component drawn per forward pass (see :meth:`log_weight_sums`).
        estimator
            ``"mixture"`` (tight, default) or ``"per_component"`` (the method's reference code);
            see :func:`~scmixvae.mixture.log_likelihood_from_sums`.
        """
        per_component = max(1, n_mc_samples // self.n_components)
        sums = self.log_weight_sums(tensors, per_component, n_mc_samples_per_pass)
        log_lik = log_likelihood_from_sums(sums, per_component, estimator)
        if return_mean:
            return log_lik.mean().item()
        return log_lik.cpu()
