"""MixSCANVAE: scANVI's model with a mixture posterior for ``z1``, trained by MISELBO."""

from __future__ import annotations

import math

import torch
from scvi import REGISTRY_KEYS
from scvi.module import SCANVAE
from scvi.module._constants import MODULE_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch.distributions import Categorical, Normal, kl_divergence
from torch.nn import functional as F

from scmixvae.mixture import bound

from .module import COMPONENT_KEY, UNTRANSFORMED_Z_KEY, MixVAE


def _label_broadcast(z: torch.Tensor, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every draw paired with every label, label-major: ``(one-hot [C * N, C], z [C * N, D])``."""
    labels = F.one_hot(torch.arange(n_labels, device=z.device), n_labels).to(z.dtype)
    return labels.repeat_interleave(z.shape[0], dim=0), z.repeat(n_labels, 1)


class MixSCANVAE(MixVAE, SCANVAE):
    r"""scANVI with a uniform mixture of ``S`` encoders for :math:`q(z_1 \mid x)`.

    scvi-tools' :class:`~scvi.module.SCANVAE` (labels :math:`y`, :math:`z_2 \sim N(0, I)`,
    :math:`z_1 \mid z_2, y`, counts :math:`x \mid z_1`, the classifier :math:`q(y \mid z_1)` and
    :math:`q(z_2 \mid z_1, y)`) with the mixture encoder of
    :class:`~scmixvae.singlecell.module.MixVAE` in place of its Gaussian one. Every option of
    both classes is accepted (``n_components``, ``objective``, ``shared_encoder``,
    ``n_sampled_components``, ``n_labels``, ``y_prior``, ``linear_classifier``, ...).

    The bound is the objective's (MISELBO by default) over the draws of :math:`z_1`, with
    scANVI's variational bound on :math:`\log p(z_1)` in place of a standard-normal prior:

    .. math::
        \log p(z_1) \ge \mathbb{E}_{q(y \mid z_1)} \big[\mathbb{E}_{q(z_2 \mid z_1, y)}
        \log p(z_1 \mid z_2, y) - \mathrm{KL}(q(z_2 \mid z_1, y) \,\|\, p(z_2))\big]
        - \mathrm{KL}(q(y \mid z_1) \,\|\, p(y)),

    the KL warm-up factor on the KL terms as in scANVI. With ``S = 1`` the loss is scANVI's.

    The classifier is trained on labelled cells as scANVI trains it, on the posterior mean, here
    of every component: the mean over components of each component-mean's cross-entropy, so
    that every component is a classifier in its own right (as each member of a deep ensemble).

    A latent flow (``flow_steps``) acts on :math:`z_1`: the decoder, the hierarchy and the
    classifier see the flowed draws (and the flowed component means). The prior of
    :math:`z_1` stays scANVI's, so ``prior`` must be ``"standard_normal"``.
    """

    latent_prior_choice = False

    # loss -------------------------------------------------------------------------------------
    def _hierarchy_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scANVI's terms at latent draws ``z [N, D]``, each ``[N]``.

        Returns :math:`\\mathbb{E}_{q(y|z)} \\log p(z \\mid z_2, y)` and the KL part
        :math:`\\mathbb{E}_{q(y|z)} \\mathrm{KL}(z_2) + \\mathrm{KL}(q(y \\mid z) \\| p(y))`, in
        scANVI's order of random draws (z2 encoder, z1 decoder, classifier).
        """
        ys, zs = _label_broadcast(z, self.n_labels)
        qz2, z2 = self.encoder_z2_z1(zs, ys)
        pz1_m, pz1_v = self.decoder_z1_z2(z2, ys)
        log_pz1 = Normal(pz1_m, pz1_v.sqrt()).log_prob(zs).sum(-1).view(self.n_labels, -1).t()
        kl_z2 = kl_divergence(qz2, Normal(0.0, 1.0)).sum(-1).view(self.n_labels, -1).t()
        probs = self._label_probabilities(z)
        kl_y = kl_divergence(
            Categorical(probs=probs), Categorical(probs=self.y_prior.expand_as(probs))
        )
        return (log_pz1 * probs).sum(-1), (kl_z2 * probs).sum(-1) + kl_y

    def _label_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`q(y \\mid z)` at latent points ``z [N, D]``, ``[N, C]``."""
        out = self.classify_helper(z)
        return F.softmax(out, dim=-1) if self.classifier.logits else out

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float | torch.Tensor = 1.0,
        labelled_tensors: dict[str, torch.Tensor] | None = None,
        classification_ratio: float | None = None,
    ) -> LossOutput:
        """Negative bound (:func:`scmixvae.mixture.bound`) plus, for a labelled minibatch,
        ``classification_ratio`` times the classification loss, as scANVI's loss."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        untran_z = inference_outputs[UNTRANSFORMED_Z_KEY]
        component = inference_outputs.get(COMPONENT_KEY)
        if untran_z.dim() != 4 or component is None:
            raise ValueError("the mixture's terms need stratified draws [L, A, B, D].")
        lead = untran_z.shape[:-1]
        log_px_z = self.draw_log_likelihood(generative_outputs[MODULE_KEYS.PX_KEY], x, untran_z)
        z = inference_outputs[MODULE_KEYS.Z_KEY]  # what the classifier sees, as in scANVI
        hierarchy = self._hierarchy_terms(z.reshape(-1, z.shape[-1]))
        log_pz1, kl_upper = (t.view(lead) for t in hierarchy)
        # scANVI warms up only the KL terms of z2, y and the library: fold them into the
        # likelihood so that the core's bound (beta = 1) is scANVI's loss
        terms = self.posterior_terms(
            inference_outputs, log_px_z=log_px_z - kl_weight * kl_upper, log_pz=log_pz1
        )
        importance_weighted = self.importance_weighted and self.n_particles > 1
        kl_l = self._library_kl(tensors, inference_outputs)
        loss_per_cell = kl_weight * kl_l - bound(
            terms, self.objective, 1.0, importance_weighted=importance_weighted
        )
        denominator = terms.denominator(self.objective)
        reconstruction = (denominator - log_px_z - log_pz1).mean((0, 1))
        kl_local = kl_upper.mean((0, 1)) + kl_l
        loss = loss_per_cell.mean()
        extra_metrics = self._extra_metrics(tensors, inference_outputs)
        if labelled_tensors is None:
            return LossOutput(
                loss=loss,
                reconstruction_loss=reconstruction,
                kl_local=kl_local,
                extra_metrics=extra_metrics,
            )
        ce_loss, true_labels, logits = self.classification_loss(labelled_tensors)
        return LossOutput(
            loss=loss + ce_loss * classification_ratio,
            reconstruction_loss=reconstruction,
            kl_local=kl_local,
            classification_loss=ce_loss,
            true_labels=true_labels,
            logits=logits,
            extra_metrics=extra_metrics,
        )

    def _library_kl(self, tensors: dict, inference_outputs: dict) -> torch.Tensor:
        """Closed-form :math:`\\mathrm{KL}(q(l \\mid x) \\| p(l))` per cell (0 when observed)."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        if self.use_observed_lib_size:
            return torch.zeros(x.shape[0], device=x.device)
        prior = self._library_prior(tensors[REGISTRY_KEYS.BATCH_KEY])
        return kl_divergence(inference_outputs[MODULE_KEYS.QL_KEY], prior).sum(-1)

    def _extra_metrics(self, tensors: dict, inference_outputs: dict) -> dict:
        if not self.extra_payload_autotune:
            return {}
        return {  # what scvi-tools' autotune metrics read, as scANVI gives
            "z": inference_outputs[MODULE_KEYS.QZ_KEY].loc,
            "batch": tensors[REGISTRY_KEYS.BATCH_KEY],
            "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
        }

    def latent_log_prior(self, z: torch.Tensor, pseudo_posterior=None) -> torch.Tensor:
        r"""An unbiased estimate of :math:`p(z_1)` in log space, at draws ``[..., D]``.

        :math:`\log \sum_y p(y)\, p(z_1 \mid z_2^y, y)\, p(z_2^y) / q(z_2^y \mid z_1, y)` with one
        draw :math:`z_2^y \sim q(z_2 \mid z_1, y)` per label: the labels are summed exactly, so
        importance weights with it estimate scANVI's :math:`p(x)`.
        """
        flat = z.reshape(-1, z.shape[-1])
        ys, zs = _label_broadcast(flat, self.n_labels)
        qz2, z2 = self.encoder_z2_z1(zs, ys)
        pz1_m, pz1_v = self.decoder_z1_z2(z2, ys)
        log_w = (
            Normal(pz1_m, pz1_v.sqrt()).log_prob(zs).sum(-1)
            + Normal(0.0, 1.0).log_prob(z2).sum(-1)
            - qz2.log_prob(z2).sum(-1)
        ).view(self.n_labels, -1)
        log_py = torch.log(self.y_prior.reshape(-1, 1))
        return torch.logsumexp(log_w + log_py, dim=0).view(z.shape[:-1])

    # classification ---------------------------------------------------------------------------
    @auto_move_data
    def component_probabilities(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        use_posterior_mean: bool = True,
        n_samples: int = 1,
    ) -> torch.Tensor:
        r"""Each component's label probabilities, ``[S, B, C]``.

        ``use_posterior_mean``: the classifier at each component's mean. Otherwise the
        classifier averaged over ``n_samples`` draws from each component,
        :math:`p_s(y \mid x) = \frac1L \sum_l q(y \mid z_{sl})`. Their mean over components
        is the mixture predictive.
        """
        qz, _, _ = self._encode(x, batch_index, cont_covs, cat_covs)
        if use_posterior_mean:
            z = qz.component_loc.unsqueeze(0)  # [1, S, B, D]
        else:
            z = qz.rsample((n_samples,))  # [L, S, B, D]
        z = self.flow_latent(z)
        probs = self._label_probabilities(self._z_transformation(z).reshape(-1, z.shape[-1]))
        return probs.view(*z.shape[:-1], -1).mean(0)

    @auto_move_data
    def classify(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        use_posterior_mean: bool = True,
    ) -> torch.Tensor:
        """Log of the mixture predictive :math:`\\log \\frac1S \\sum_s p_s(y \\mid x)`, ``[B, C]``.

        Returned where scANVI returns logits: its softmax is the mixture predictive, so
        scvi-tools' ``predict`` and metrics read it unchanged. With ``S = 1`` and the posterior
        mean it equals scANVI's logits up to a constant per cell.
        """
        probs = self.component_probabilities(
            x, batch_index, cont_covs, cat_covs, use_posterior_mean=use_posterior_mean
        )
        return torch.log(probs.mean(0).clamp_min(torch.finfo(probs.dtype).tiny))

    @auto_move_data
    def classification_loss(
        self, labelled_dataset: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean over components of the cross-entropy at each component's mean.

        Returns ``(ce, y, log p)``, ``log p`` the log mixture predictive at the means.
        """
        inputs = self._get_inference_input(labelled_dataset)
        qz, _, _ = self._encode(
            inputs[MODULE_KEYS.X_KEY],
            labelled_dataset[REGISTRY_KEYS.BATCH_KEY],
            labelled_dataset.get(REGISTRY_KEYS.CONT_COVS_KEY),
            labelled_dataset.get(REGISTRY_KEYS.CAT_COVS_KEY),
        )
        # scANVI's encoder draws a latent here that its classifier does not use; drawing as
        # many normals keeps S = 1 on scANVI's random stream (the classifier's dropout masks)
        torch.randn(qz.loc.shape, dtype=qz.loc.dtype, device=qz.loc.device)
        y = labelled_dataset[REGISTRY_KEYS.LABELS_KEY]
        means = self.flow_latent(qz.component_loc)  # [S, B, D]
        logits = self.classify_helper(means.reshape(-1, means.shape[-1]))
        if not self.classifier.logits:  # a classifier that ends in a softmax
            logits = torch.log(logits.clamp_min(torch.finfo(logits.dtype).tiny))
        labels = y.view(-1).long().repeat(self.n_components)
        ce_loss = F.cross_entropy(logits, labels)
        log_probs = F.log_softmax(logits, -1).view(self.n_components, -1, logits.shape[-1])
        mixture = torch.logsumexp(log_probs, 0) - math.log(self.n_components)
        return ce_loss, y, mixture
