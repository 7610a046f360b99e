"""MixVAE: scVI's generative model with a mixture of S encoders, trained with MISELBO."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module import VAE
from scvi.module._constants import MODULE_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch.distributions import Distribution, Normal, kl_divergence

from scmixvae.mixture import (
    DEFAULT_OBJECTIVE,
    DrawTerms,
    MixtureNormal,
    Objective,
    PriorName,
    bound,
    jsd,
    kl_term,
)

from .encoders import build_mixture_encoder, check_encoder_kwargs
from .module_evaluation import MixtureEvaluationMixin
from .module_options import (  # noqa: F401  re-exported: the model classes import them here
    MAX_DECODED_DRAWS,
    MAX_ELEMENTS_PER_PASS,
    MAX_SEPARATE_COMPONENTS,
    MAX_SHARED_COMPONENTS,
    _cell_chunks,
    mixture_from_flat,
    validate_mixture_options,
)
from .module_priors import COMPONENT_KEY, PSEUDO_QZ_KEY, UNTRANSFORMED_Z_KEY, PriorFlowMixin


class MixVAE(PriorFlowMixin, MixtureEvaluationMixin, VAE):
    r"""scVI with a uniform mixture of ``S`` encoders for :math:`q(z \mid x)`.

    The generative model, decoder, likelihoods, library-size handling and covariates are
    scvi-tools' :class:`~scvi.module.VAE`; the encoder is a mixture of ``S`` components and the
    loss a mixture bound from :mod:`scmixvae.mixture` (MISELBO by default).

    Parameters
    ----------
    n_input
        Number of genes.
    n_components
        Number of mixture components ``S``.
    objective
        ``"miselbo"``: each draw is weighed against the whole mixture (the method).
        ``"ensemble"``: each component against its own density: ``S`` independently trained
        encoders sharing the decoder, the baseline the method is compared with.
        ``"some_to_some"``: against the mixture of the drawn components only (see
        :mod:`scmixvae.mixture.bounds`).
    shared_encoder
        ``False``: ``S`` separate encoders (:class:`~scmixvae.mixture.StackedEncoder`), one
        batched module. ``True``: scVI's encoder layers as a trunk shared by all components and
        a small head conditioned on each component's code
        (:class:`~scmixvae.singlecell.encoders.SharedTrunkEncoder`); a component then costs a
        few hundred parameters.
    n_sampled_components
        ``A``, the components each cell draws from per training step. ``None`` (default): all
        ``S``, the stratified estimator. ``A < S``: ``A`` distinct components per cell, drawn
        uniformly, so the decoder runs on ``A`` draws per cell; with ``"miselbo"`` this is the
        unbiased Some-to-All estimator. Held-out likelihoods and diagnostics always use all
        ``S``.
    n_particles
        Draws per drawn component per training step, ``L``.
    importance_weighted
        With ``n_particles > 1``, combine each component's draws with a log-mean-exp (IWAE form).
    n_head_hidden
        ``None`` (default): the shared encoder codes its last hidden layer. An integer: the
        earlier layout, a coded head of this width after all ``n_layers`` shared layers, kept
        to reproduce earlier results (see
        :class:`~scmixvae.singlecell.encoders.SharedTrunkEncoder`).
    prior
        ``"standard_normal"`` (scVI's), ``"vamp"`` (a VampPrior: ``n_prior_components``
        pseudo-inputs through the mixture encoder, :class:`~scmixvae.mixture.VampPrior`) or
        ``"mog"`` (a learned Gaussian mixture, :class:`~scmixvae.mixture.MixtureOfGaussiansPrior`).
    n_prior_components
        ``K`` of the VampPrior or the Gaussian mixture (default 20; SysVI's is 5, which
        held-out likelihood measured too few with one encoder).
    pseudo_inputs, pseudo_input_batch, pseudo_input_cat_covs
        The VampPrior's initial pseudo-inputs, ``[K, G]`` (``log1p`` counts, with the
        continuous covariates appended when they are encoded), and their fixed batch
        ``[K, 1]`` and categorical covariates ``[K, n_cat]``; the model class takes them from
        real cells.
    flow_steps
        Steps of a latent flow shared by the components (:class:`~scmixvae.mixture.LatentFlow`,
        0: none). The decoder and the prior see the flowed latent.
    **kwargs
        Everything :class:`scvi.module.VAE` takes (``n_batch``, ``n_hidden``, ``n_latent``,
        ``n_layers``, ``dispersion``, ``gene_likelihood``, ``use_observed_lib_size``, ...).

    Notes
    -----
    The KL term is estimated by Monte Carlo against the objective's denominator. When that is a
    single Gaussian (``S == 1`` or the ensemble objective, without the importance-weighted form)
    the closed-form KL is used instead, exactly as scVI does, so ``S == 1`` is scVI.
    With a latent library size, ``q(l | x)`` is scVI's single library encoder, shared by the
    components.
    """

    def __init__(
        self,
        n_input: int,
        n_components: int = 5,
        objective: Objective = DEFAULT_OBJECTIVE,
        shared_encoder: bool = False,
        n_sampled_components: int | None = None,
        n_particles: int = 1,
        importance_weighted: bool = False,
        n_head_hidden: int | None = None,
        prior: PriorName = "standard_normal",
        n_prior_components: int | None = None,
        pseudo_inputs: torch.Tensor | None = None,
        pseudo_input_batch: torch.Tensor | None = None,
        pseudo_input_cat_covs: torch.Tensor | None = None,
        flow_steps: int = 0,
        n_batch: int = 0,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: list[int] | None = None,
        dropout_rate: float = 0.1,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        extra_encoder_kwargs: dict | None = None,
        latent_distribution: Literal["normal", "ln"] = "normal",
        batch_representation: Literal["one-hot", "embedding"] = "one-hot",
        **kwargs,
    ):
        validate_mixture_options(
            n_components, objective, shared_encoder, n_sampled_components, n_particles,
            kwargs.get("gene_likelihood"),
        )  # fmt: skip
        check_encoder_kwargs(extra_encoder_kwargs)  # before scVI's own encoder sees them
        super().__init__(
            n_input,
            n_batch=n_batch,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_continuous_cov=n_continuous_cov,
            n_cats_per_cov=n_cats_per_cov,
            dropout_rate=dropout_rate,
            encode_covariates=encode_covariates,
            deeply_inject_covariates=deeply_inject_covariates,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            var_activation=var_activation,
            extra_encoder_kwargs=extra_encoder_kwargs,
            latent_distribution=latent_distribution,
            batch_representation=batch_representation,
            **kwargs,
        )
        self.n_components = int(n_components)
        self.objective = objective
        self.shared_encoder = bool(shared_encoder)
        self.n_sampled_components = (
            None if n_sampled_components is None else int(n_sampled_components)
        )
        self.n_particles = n_particles
        self.importance_weighted = importance_weighted
        # the same inputs and options scVI's VAE gave its z encoder
        n_input_encoder = n_input + n_continuous_cov * encode_covariates
        if batch_representation == "embedding":  # the batch enters as an embedding
            batch_dim = self.get_embedding(REGISTRY_KEYS.BATCH_KEY).embedding_dim
            n_input_encoder += batch_dim * encode_covariates
            cat_list = list(n_cats_per_cov or []) if encode_covariates else None
        else:
            cat_list = [n_batch, *(n_cats_per_cov or [])] if encode_covariates else None
        options = {
            "n_cat_list": cat_list,
            "n_layers": n_layers,
            "n_hidden": n_hidden,
            "dropout_rate": dropout_rate,
            "use_batch_norm": use_batch_norm in ("encoder", "both"),
            "use_layer_norm": use_layer_norm in ("encoder", "both"),
            "inject_covariates": deeply_inject_covariates,
            "var_activation": var_activation,
            "extra_encoder_kwargs": extra_encoder_kwargs,
        }
        self.z_encoder = build_mixture_encoder(
            self.n_components,
            self.shared_encoder,
            n_input_encoder,
            self.n_latent,
            n_head_hidden=n_head_hidden,
            **options,
        )
        self._build_prior_and_flow(
            # pseudo-inputs: counts and encoded continuous covariates (a batch embedding is added)
            prior, n_prior_components, n_input + n_continuous_cov * encode_covariates,
            pseudo_inputs, pseudo_input_batch,
            pseudo_input_cat_covs, flow_steps,
        )  # fmt: skip

    # inference -------------------------------------------------------------------------------
    def forward(
        self,
        tensors: dict[str, torch.Tensor],
        get_inference_input_kwargs: dict | None = None,
        get_generative_input_kwargs: dict | None = None,
        inference_kwargs: dict | None = None,
        generative_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        compute_loss: bool = True,
    ):
        """As :meth:`scvi.module.base.BaseModuleClass.forward`.

        When a loss is computed the draws come from ``A`` components per cell
        (``[L, A, B, D]``; the module's ``n_sampled_components`` unless ``inference_kwargs``
        says otherwise), otherwise ``n_samples`` draws come from the mixture (``[n, B, D]``, or
        ``[B, D]``), the shapes scvi-tools' posterior-predictive methods expect.
        """
        inference_kwargs = dict(inference_kwargs or {})
        inference_kwargs.setdefault("stratified", compute_loss)
        if compute_loss and inference_kwargs["stratified"]:
            inference_kwargs.setdefault("n_samples", self.n_particles)
            inference_kwargs.setdefault("n_sampled_components", self.n_sampled_components)
        return super().forward(
            tensors,
            get_inference_input_kwargs=get_inference_input_kwargs,
            get_generative_input_kwargs=get_generative_input_kwargs,
            inference_kwargs=inference_kwargs,
            generative_kwargs=generative_kwargs,
            loss_kwargs=loss_kwargs,
            compute_loss=compute_loss,
        )

    def _z_transformation(self, z: torch.Tensor) -> torch.Tensor:
        """scVI's map from the Gaussian latent to the decoder's input (softmax for ``"ln"``)."""
        return torch.softmax(z, dim=-1) if self.latent_distribution == "ln" else z

    def _regular_inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        n_samples: int = 1,
        stratified: bool = False,
        n_sampled_components: int | None = None,
    ) -> dict[str, torch.Tensor | Distribution | None]:
        """Encode the counts into the mixture, then draw latents (see :meth:`_draw`)."""
        encoder_input, covariates = self._encoder_inputs(x, batch_index, cont_covs, cat_covs)
        qz, pseudo_qz = self._encode_with_pseudo_inputs(encoder_input, covariates)
        # the latent is drawn before the library encoder runs, in scVI's order of draws
        latent = self._draw_latent(qz, n_samples, stratified, n_sampled_components)
        latent[PSEUDO_QZ_KEY] = pseudo_qz
        ql = None
        if self.use_observed_lib_size:
            # a cell without counts would give log(0); flooring at one count leaves others as scVI
            library = torch.log(x.sum(1).clamp(min=1.0)).unsqueeze(1)
        else:
            ql, library = self.l_encoder(encoder_input, *covariates)
        return self._outputs(qz, latent, ql, library)

    def _encode(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
    ) -> tuple[MixtureNormal, torch.Tensor, tuple]:
        """The mixture posterior of the counts, with the encoders' input and covariates."""
        encoder_input, covariates = self._encoder_inputs(x, batch_index, cont_covs, cat_covs)
        return self.z_encoder(encoder_input, *covariates), encoder_input, covariates

    def _encoder_inputs(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        """What the encoders read: ``log1p`` counts (and encoded covariates), and covariates."""
        encoder_input = torch.log1p(x) if self.log_variational else x
        if cont_covs is not None and self.encode_covariates:
            encoder_input = torch.cat((encoder_input, cont_covs), dim=-1)
        categorical = (
            torch.split(cat_covs, 1, dim=1)
            if cat_covs is not None and self.encode_covariates
            else ()
        )
        if self.batch_representation == "embedding":
            if self.encode_covariates:
                batch_rep = self.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch_index)
                encoder_input = torch.cat([encoder_input, batch_rep], dim=-1)
            covariates = categorical
        else:
            covariates = (batch_index, *categorical)
        return encoder_input, covariates

    def _cached_inference(
        self,
        qzm: torch.Tensor,
        qzv: torch.Tensor,
        observed_lib_size: torch.Tensor,
        n_samples: int = 1,
        stratified: bool = False,
        n_sampled_components: int | None = None,
    ) -> dict[str, torch.Tensor | Distribution | None]:
        """Inference from a minified AnnData's stored posterior (no encoder pass).

        ``qzm`` and ``qzv`` hold every component's means and variances, ``[B, S * D]``
        (component-major: the first ``D`` columns are component 0's); see
        :meth:`MixSCVI.minify_adata <scmixvae.MixSCVI.minify_adata>`.
        """
        qz = mixture_from_flat(qzm, qzv, self.n_components)
        with torch.no_grad():  # the stored posterior is not optimised
            latent = self._draw_latent(qz, n_samples, stratified, n_sampled_components)
        return self._outputs(qz, latent, None, torch.log(observed_lib_size))

    def _outputs(
        self, qz: MixtureNormal, latent: dict, ql: Distribution | None, library: torch.Tensor
    ) -> dict[str, torch.Tensor | Distribution | None]:
        """Inference outputs: ``qz``, ``z``, ``ql``, ``library``, ``untran_z`` (the draws before
        scVI's ``latent_distribution`` transform, which the bounds score), for stratified draws
        ``component`` (``[A, B]``, which component drew), the flow's ``base_z`` and
        ``flow_log_det`` (:meth:`_draw_latent`) and, in training with a VampPrior,
        ``pseudo_qz``."""
        latent = dict(latent)
        draws = latent.pop("draws")
        if ql is None or math.prod(draws) == 1:
            # the library encoder already drew one sample: reuse it, so S = 1 is scVI's draws
            library = library.expand(*draws, *library.shape)
        else:
            library = ql.rsample(draws)
        return {
            MODULE_KEYS.Z_KEY: self._z_transformation(latent[UNTRANSFORMED_Z_KEY]),
            MODULE_KEYS.QZ_KEY: qz,
            MODULE_KEYS.QL_KEY: ql,
            MODULE_KEYS.LIBRARY_KEY: library,
            PSEUDO_QZ_KEY: None,
            **latent,  # the draws (and the flow's base draws and log-determinant)
        }

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        transform_batch: torch.Tensor | None = None,
    ) -> dict[str, Distribution | None]:
        """scVI's generative model.

        Mixture draws (``z [B, D]`` or ``[n, B, D]``) go to scVI's generative model as they are.
        Stratified draws ``z [L, A, B, D]`` are decoded in one pass with the draws flattened
        into the cell axis: the likelihood's parameters then have shape ``[L * A * B, G]``, in
        the order ``(L, A, B)``, and :meth:`draw_log_likelihood` scores them.
        """
        if z.dim() != 4:
            return super().generative(
                z, library, batch_index, cont_covs=cont_covs, cat_covs=cat_covs,
                size_factor=size_factor, y=y, transform_batch=transform_batch,
            )  # fmt: skip
        lead = tuple(z.shape[:-2])
        n_flat = math.prod(lead) * z.shape[-2]

        def per_draw(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.expand(*lead, *t.shape[-2:]).reshape(n_flat, t.shape[-1])

        outputs = super().generative(
            z.reshape(n_flat, z.shape[-1]),
            per_draw(library),
            per_draw(batch_index),
            cont_covs=per_draw(cont_covs),
            cat_covs=per_draw(cat_covs),
            size_factor=per_draw(size_factor),
            y=per_draw(y),
            transform_batch=transform_batch,
        )
        return outputs

    # loss ------------------------------------------------------------------------------------
    @staticmethod
    def draw_log_likelihood(px: Distribution, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x \\mid z)` of flat decoded draws: ``[L, A, B]`` for ``z [L, A, B, D]``.

        ``px`` holds the parameters of ``L * A * B`` draws in the order ``(L, A, B)``.
        """
        lead = z.shape[:-2]
        x_per_draw = x.repeat(math.prod(lead), 1)  # same (L, A, B) order as the draws
        return px.log_prob(x_per_draw).sum(-1).view(*lead, x.shape[0])

    def _log_library_ratio(self, inference_outputs, batch_index) -> torch.Tensor:
        """log p(l) - log q(l | x) at the library draws, ``[..., B]`` (0 for observed sizes)."""
        library = inference_outputs[MODULE_KEYS.LIBRARY_KEY]
        if self.use_observed_lib_size:
            return torch.zeros(library.shape[:-1], device=library.device)
        ql = inference_outputs[MODULE_KEYS.QL_KEY]
        prior = self._library_prior(batch_index)
        return (prior.log_prob(library) - ql.log_prob(library)).sum(-1)

    def draw_terms(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        include_library: bool = False,
    ) -> DrawTerms:
        """The per-draw terms (:class:`~scmixvae.mixture.DrawTerms`) of a stratified forward pass.

        ``include_library`` folds the latent library's :math:`\\log p(l) - \\log q(l \\mid x)`
        into :math:`\\log p(x \\mid z)`, as the importance weights need.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        z = inference_outputs[UNTRANSFORMED_Z_KEY]  # the latent the decoder and prior see
        component = inference_outputs.get(COMPONENT_KEY)
        if z.dim() != 4 or component is None:
            raise ValueError("the mixture's terms need stratified draws [L, A, B, D].")
        log_px_z = self.draw_log_likelihood(generative_outputs[MODULE_KEYS.PX_KEY], x, z)
        if include_library:
            log_px_z = log_px_z + self._log_library_ratio(
                inference_outputs, tensors[REGISTRY_KEYS.BATCH_KEY]
            )
        return self.posterior_terms(
            inference_outputs,
            log_px_z=log_px_z,
            log_pz=self.latent_log_prior(z, inference_outputs.get(PSEUDO_QZ_KEY)),
        )

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor | Distribution | None],
        generative_outputs: dict[str, Distribution | None],
        kl_weight: float | torch.Tensor = 1.0,
    ) -> LossOutput:
        """Negative bound (:func:`scmixvae.mixture.bound`) averaged over the minibatch.

        ``reconstruction_loss`` and ``kl_local['kl_divergence_z']`` are per-cell averages over
        the draws; their sum is the negative bound, so scvi-tools' ``get_elbo`` returns it.
        """
        importance_weighted = self.importance_weighted and self.n_particles > 1
        terms = self.draw_terms(tensors, inference_outputs, generative_outputs)
        if importance_weighted:  # the latent library's log-ratio joins every importance weight
            library_ratio = self._log_library_ratio(
                inference_outputs, tensors[REGISTRY_KEYS.BATCH_KEY]
            )
            weighted = replace(terms, log_px_z=terms.log_px_z + library_ratio)
            loss = -bound(weighted, self.objective, kl_weight, importance_weighted=True).mean()
            kl_l = torch.zeros_like(library_ratio[0, 0])
        else:
            if self.use_observed_lib_size:
                kl_l = torch.zeros(terms.component.shape[-1], device=terms.log_q_mix.device)
            else:  # one library encoder for all components: closed form, as scVI
                kl_l = kl_divergence(
                    inference_outputs[MODULE_KEYS.QL_KEY],
                    self._library_prior(tensors[REGISTRY_KEYS.BATCH_KEY]),
                ).sum(-1)
            loss = torch.mean(kl_l - bound(terms, self.objective, kl_weight))
        extra_metrics = {}
        # scvi-tools 1.4 logs extra metrics under inference_mode, which breaks the metric sync
        # of multi-process (DDP) training; the JSD stays available there via the model methods
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            extra_metrics["jsd"] = jsd(terms).detach().mean()
        if extra_metrics or self.extra_payload_autotune:
            # scvi-tools hands a non-empty extra_metrics to its scib-metrics autotune hook, which
            # reads the latent payload whenever a Scib callback is attached; scVI sends an empty
            # dict by default, so the JSD needs the payload beside it (references only: logged
            # metrics are the 0-d ones, and the hook copies nothing without a Scib callback)
            extra_metrics.update({
                "z": inference_outputs[MODULE_KEYS.QZ_KEY].loc,
                "batch": tensors[REGISTRY_KEYS.BATCH_KEY],
                "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
            })  # fmt: skip
        return LossOutput(
            loss=loss,
            reconstruction_loss=-terms.log_px_z.mean((0, 1)),
            kl_local={
                MODULE_KEYS.KL_L_KEY: kl_l,
                MODULE_KEYS.KL_Z_KEY: kl_term(terms, self.objective),
            },
            extra_metrics=extra_metrics,
        )

    def _library_prior(self, batch_index: torch.Tensor) -> Normal:
        means, variances = self._compute_local_library_params(batch_index)
        return Normal(means, variances.sqrt())
