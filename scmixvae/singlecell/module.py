"""MixVAE: scVI's generative model with a mixture of S encoders, trained with MISELBO."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.module import VAE
from scvi.module._constants import MODULE_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch.distributions import Distribution, Normal, kl_divergence

from scmixvae.mixture import (
    MixtureNormal,
    StackedEncoder,
    importance_sampled_log_likelihood,
    stratified_bound,
)
from scmixvae.mixture.bounds import NLLEstimator

Objective = Literal["miselbo", "ensemble"]
OBJECTIVES = ("miselbo", "ensemble")
MAX_COMPONENTS = 128
# bound on decoded values (draws x cells x genes) per importance-sampling pass: ~10 float32
# tensors of this size are alive at once, so 2e7 keeps a pass under 1 GB
MAX_ELEMENTS_PER_PASS = 20_000_000


def _reshape_leading(tensor: torch.Tensor | None, n_flat: int, shape: tuple[int, ...]):
    """Unflatten the first axis of ``tensor`` to ``shape`` where it has the flattened length."""
    if tensor is None or tensor.dim() == 0 or tensor.shape[0] != n_flat:
        return tensor
    return tensor.reshape(*shape, *tensor.shape[1:])


def _reshape_px(px: Distribution, n_flat: int, shape: tuple[int, ...]) -> Distribution:
    """Rebuild an scvi-tools likelihood with its flattened sample axis unflattened."""
    params = {}
    for name in ("mu", "theta", "zi_logits", "scale", "rate", "loc", "normal_mu"):
        value = px.__dict__.get(name)
        if isinstance(value, torch.Tensor):
            params[name] = _reshape_leading(value, n_flat, shape)
    cls = type(px)
    if cls.__name__ == "ZeroInflatedNegativeBinomial":
        return cls(
            mu=params["mu"], theta=params["theta"], zi_logits=params["zi_logits"],
            scale=params["scale"],
        )  # fmt: skip
    if cls.__name__ == "NegativeBinomial":
        return cls(mu=params["mu"], theta=params["theta"], scale=params["scale"])
    if cls.__name__ == "Poisson":
        return cls(rate=params["rate"], scale=params["scale"])
    raise TypeError(f"unsupported likelihood {cls.__name__}.")


class MixVAE(VAE):
    r"""scVI with a uniform mixture of ``S`` encoders for :math:`q(z \mid x)`.

    The generative model, decoder, likelihoods, library-size handling and covariates are
    scvi-tools' :class:`~scvi.module.VAE`; only the encoder is replaced by a
    :class:`~scmixvae.mixture.StackedEncoder` of ``S`` components and the loss by MISELBO
    (:func:`~scmixvae.mixture.miselbo`), with the decoder run on all ``S x L`` draws in one pass.

    Parameters
    ----------
    n_input
        Number of genes.
    n_components
        Number of mixture components ``S``.
    objective
        ``"miselbo"``: each draw is weighed against the whole mixture (the method).
        ``"ensemble"``: each component against its own density — ``S`` independently trained
        encoders sharing the decoder, the baseline the method is compared with.
    n_particles
        Draws per component per training step, ``L``.
    importance_weighted
        With ``n_particles > 1``, combine each component's draws with a log-mean-exp (IWAE form).
    **kwargs
        Everything :class:`scvi.module.VAE` takes (``n_batch``, ``n_hidden``, ``n_latent``,
        ``n_layers``, ``dispersion``, ``gene_likelihood``, ``use_observed_lib_size``, ...).

    Notes
    -----
    The KL term is estimated by Monte Carlo against the mixture. When the denominator is a
    single Gaussian (``S == 1`` or the ensemble objective, without the importance-weighted form)
    the closed-form KL is used instead, exactly as scVI does, so ``S == 1`` is scVI.
    With a latent library size, ``q(l | x)`` is scVI's single library encoder, shared by the
    components.
    """

    def __init__(
        self,
        n_input: int,
        n_components: int = 5,
        objective: Objective = "miselbo",
        n_particles: int = 1,
        importance_weighted: bool = False,
        latent_distribution: Literal["normal"] = "normal",
        batch_representation: Literal["one-hot"] = "one-hot",
        **kwargs,
    ):
        if not isinstance(n_components, int | np.integer) or n_components < 1:
            raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}.")
        if n_components > MAX_COMPONENTS:
            raise ValueError(
                f"n_components={n_components} is beyond the supported {MAX_COMPONENTS}: every "
                "training step decodes S draws per cell, and MISELBO's gains flatten long before."
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if n_particles < 1:
            raise ValueError(f"n_particles must be >= 1, got {n_particles}.")
        if latent_distribution != "normal":
            raise NotImplementedError("MixVAE supports latent_distribution='normal' only.")
        if batch_representation != "one-hot":
            raise NotImplementedError("MixVAE supports batch_representation='one-hot' only.")
        if kwargs.get("gene_likelihood") == "normal":
            raise NotImplementedError(
                "MixVAE models counts: gene_likelihood 'zinb', 'nb' or 'poisson'."
            )
        super().__init__(n_input, latent_distribution="normal", **kwargs)
        self.n_components = int(n_components)
        self.objective = objective
        self.n_particles = n_particles
        self.importance_weighted = importance_weighted

        # read the options back from the encoder scVI just built, so the stacked one matches
        # whatever VAE made of its keyword defaults
        first = self.z_encoder.encoder.fc_layers[0][0]
        cat_list = [n for n in self.z_encoder.encoder.n_cat_list]
        use_bn = any(isinstance(m, torch.nn.BatchNorm1d) for m in self.z_encoder.modules())
        use_ln = any(isinstance(m, torch.nn.LayerNorm) for m in self.z_encoder.modules())
        dropout = next(
            (m.p for m in self.z_encoder.modules() if isinstance(m, torch.nn.Dropout)), 0.0
        )
        self.z_encoder = StackedEncoder(
            self.n_components,
            first.in_features - self.z_encoder.encoder.n_cov,
            self.n_latent,
            n_cat_list=cat_list or None,
            n_layers=self.n_layers,
            n_hidden=self.n_hidden,
            dropout_rate=dropout,
            use_batch_norm=use_bn,
            use_layer_norm=use_ln,
            inject_covariates=self.z_encoder.encoder.inject_covariates,
            var_activation=kwargs.get("var_activation"),
        )

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

        When a loss is computed the draws are stratified over components (``[L, S, B, D]``),
        otherwise ``n_samples`` draws come from the mixture (``[n, B, D]``, or ``[B, D]``), the
        shapes scvi-tools' posterior-predictive methods expect.
        """
        inference_kwargs = dict(inference_kwargs or {})
        inference_kwargs.setdefault("stratified", compute_loss)
        if compute_loss and inference_kwargs["stratified"]:
            inference_kwargs.setdefault("n_samples", self.n_particles)
        return super().forward(
            tensors,
            get_inference_input_kwargs=get_inference_input_kwargs,
            get_generative_input_kwargs=get_generative_input_kwargs,
            inference_kwargs=inference_kwargs,
            generative_kwargs=generative_kwargs,
            loss_kwargs=loss_kwargs,
            compute_loss=compute_loss,
        )

    def _encoder_input(self, x, cont_covs, cat_covs):
        x_ = torch.log1p(x) if self.log_variational else x
        if cont_covs is not None and self.encode_covariates:
            x_ = torch.cat((x_, cont_covs), dim=-1)
        categorical = (
            torch.split(cat_covs, 1, dim=1)
            if cat_covs is not None and self.encode_covariates
            else ()
        )
        return x_, categorical

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        n_samples: int = 1,
        stratified: bool = False,
    ) -> dict[str, torch.Tensor | Distribution | None]:
        """Encode, then draw latents.

        Returns
        -------
        ``qz`` (:class:`~scmixvae.mixture.MixtureNormal`), ``z``, ``ql``, ``library``. ``z`` is
        ``[n_samples, S, B, D]`` when ``stratified``, else mixture draws ``[n_samples, B, D]``
        (``[B, D]`` for one sample).
        """
        if self.minified_data_type is not None:
            raise NotImplementedError("MixVAE does not support minified AnnData.")
        encoder_input, categorical = self._encoder_input(x, cont_covs, cat_covs)
        qz: MixtureNormal = self.z_encoder(encoder_input, batch_index, *categorical)
        if stratified:
            z = qz.rsample(n_samples)
            draws = (n_samples, self.n_components)
        else:
            z = qz.sample_mixture(n_samples if n_samples > 1 else ())
            draws = (n_samples,) if n_samples > 1 else ()

        ql = None
        if self.use_observed_lib_size:
            # a cell without counts would give log(0); flooring at one count leaves others as scVI
            library = torch.log(x.sum(1).clamp(min=1.0)).unsqueeze(1)
            library = library.expand(*draws, *library.shape)
        else:
            ql, library = self.l_encoder(encoder_input, batch_index, *categorical)
            # the encoder already drew one sample; reuse it so S = 1 consumes scVI's draws
            if math.prod(draws) == 1:
                library = library.expand(*draws, *library.shape)
            else:
                library = ql.rsample(draws)
        return {
            MODULE_KEYS.Z_KEY: z,
            MODULE_KEYS.QZ_KEY: qz,
            MODULE_KEYS.QL_KEY: ql,
            MODULE_KEYS.LIBRARY_KEY: library,
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
        """scVI's generative model, run once on all draws ``z [..., B, D]`` flattened."""
        lead = tuple(z.shape[:-2])
        n_obs = z.shape[-2]
        n_flat = math.prod(lead) * n_obs

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
        shape = (*lead, n_obs)
        pl = outputs[MODULE_KEYS.PL_KEY]
        return {
            MODULE_KEYS.PX_KEY: _reshape_px(outputs[MODULE_KEYS.PX_KEY], n_flat, shape),
            MODULE_KEYS.PL_KEY: None
            if pl is None
            else Normal(
                _reshape_leading(pl.loc, n_flat, shape), _reshape_leading(pl.scale, n_flat, shape)
            ),
            MODULE_KEYS.PZ_KEY: Normal(torch.zeros_like(z), torch.ones_like(z)),
        }

    # loss ------------------------------------------------------------------------------------
    def _log_library_ratio(self, inference_outputs, batch_index) -> torch.Tensor:
        """log p(l) - log q(l | x) at the library draws, ``[..., B]`` (0 for observed sizes)."""
        library = inference_outputs[MODULE_KEYS.LIBRARY_KEY]
        if self.use_observed_lib_size:
            return torch.zeros(library.shape[:-1], device=library.device)
        ql = inference_outputs[MODULE_KEYS.QL_KEY]
        prior = self._library_prior(batch_index)
        return (prior.log_prob(library) - ql.log_prob(library)).sum(-1)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor | Distribution | None],
        generative_outputs: dict[str, Distribution | None],
        kl_weight: float | torch.Tensor = 1.0,
    ) -> LossOutput:
        """Negative MISELBO (or ensemble ELBO) averaged over the minibatch.

        ``reconstruction_loss`` and ``kl_local['kl_divergence_z']`` are per-cell averages over
        the stratified draws; their sum is the negative bound, so scvi-tools' ``get_elbo``
        returns the MISELBO.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        qz: MixtureNormal = inference_outputs[MODULE_KEYS.QZ_KEY]
        z = inference_outputs[MODULE_KEYS.Z_KEY]
        if z.dim() != 4:
            raise ValueError("MixVAE.loss needs stratified draws [L, S, B, D].")
        log_px_z = generative_outputs[MODULE_KEYS.PX_KEY].log_prob(x).sum(-1)  # [L, S, B]
        log_pz = generative_outputs[MODULE_KEYS.PZ_KEY].log_prob(z).sum(-1)
        gaussian_denominator = self.objective == "ensemble" or self.n_components == 1
        log_q_mix, log_q_own = qz.log_prob(z), qz.own_component_log_prob(z)
        log_qz = log_q_mix if self.objective == "miselbo" else log_q_own

        if self.importance_weighted and self.n_particles > 1:
            log_lib = self._log_library_ratio(inference_outputs, tensors[REGISTRY_KEYS.BATCH_KEY])
            bound = stratified_bound(
                log_px_z + log_lib, log_pz, log_qz, beta=kl_weight, importance_weighted=True
            )
            kl_l = torch.zeros_like(bound)
        else:
            bound = None
            if self.use_observed_lib_size:
                kl_l = torch.zeros(x.shape[0], device=x.device)
            else:  # one library encoder for all components: closed form, as scVI
                kl_l = kl_divergence(
                    inference_outputs[MODULE_KEYS.QL_KEY],
                    self._library_prior(tensors[REGISTRY_KEYS.BATCH_KEY]),
                ).sum(-1)
        reconst_loss = -log_px_z.mean((0, 1))
        if gaussian_denominator:
            prior = Normal(torch.zeros_like(qz.component_loc), torch.ones_like(qz.component_scale))
            kl_z = (
                kl_divergence(Normal(qz.component_loc, qz.component_scale), prior).sum(-1).mean(0)
            )
        else:
            kl_z = (log_qz - log_pz).mean((0, 1))
        if bound is None:
            loss = torch.mean(reconst_loss + kl_weight * kl_z + kl_l)
        else:
            loss = -bound.mean()
        extra_metrics = {}
        # scvi-tools 1.4 logs extra metrics under inference_mode, which breaks the metric sync
        # of multi-process (DDP) training; the JSD stays available there via the model methods
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            # the generalized JSD of the components, from the densities computed above
            extra_metrics["jsd"] = (log_q_own - log_q_mix).detach().mean()
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconst_loss,
            kl_local={MODULE_KEYS.KL_L_KEY: kl_l, MODULE_KEYS.KL_Z_KEY: kl_z},
            extra_metrics=extra_metrics,
        )

    def _library_prior(self, batch_index: torch.Tensor) -> Normal:
        means, variances = self._compute_local_library_params(batch_index)
        return Normal(means, variances.sqrt())

    # evaluation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def log_importance_weights(self, tensors: dict[str, torch.Tensor], n_per_component: int):
        """Log-weights ``log p(x, z, l) - log q_mix(z | x) q(l | x)``, ``[K, S, B]``.

        Draws are stratified, ``n_per_component`` from each component; the mixture is the
        proposal.
        """
        inference_outputs, generative_outputs = self.forward(
            tensors,
            inference_kwargs={"n_samples": n_per_component, "stratified": True},
            compute_loss=False,
        )
        qz: MixtureNormal = inference_outputs[MODULE_KEYS.QZ_KEY]
        z = inference_outputs[MODULE_KEYS.Z_KEY]
        x = tensors[REGISTRY_KEYS.X_KEY].to(z.device)
        log_px_z = generative_outputs[MODULE_KEYS.PX_KEY].log_prob(x).sum(-1)
        log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lib = self._log_library_ratio(
            inference_outputs, tensors[REGISTRY_KEYS.BATCH_KEY].to(z.device)
        )
        return log_px_z + log_lib + log_pz - qz.log_prob(z)

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
            Samples per component drawn per forward pass. By default as many as keep one pass
            under ``MAX_ELEMENTS_PER_PASS`` decoded values (draws x cells x genes).
        estimator
            ``"mixture"`` (tight, default) or ``"per_component"`` (the method's reference code);
            see :func:`~scmixvae.mixture.importance_sampled_log_likelihood`.
        """
        per_component = max(1, n_mc_samples // self.n_components)
        if n_mc_samples_per_pass is None:
            n_cells, n_genes = tensors[REGISTRY_KEYS.X_KEY].shape
            n_mc_samples_per_pass = MAX_ELEMENTS_PER_PASS // (
                self.n_components * n_cells * n_genes
            )
        log_lik = importance_sampled_log_likelihood(
            lambda k: self.log_importance_weights(tensors, k),
            per_component,
            chunk_size=max(1, n_mc_samples_per_pass),
            estimator=estimator,
        )
        if return_mean:
            return log_lik.mean().item()
        return log_lik.cpu()
