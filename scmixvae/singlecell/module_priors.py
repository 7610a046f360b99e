"""The cookbook's other recipes for counts: MixVAE's latent prior, latent flow and draws.

:class:`PriorFlowMixin` is a base of :class:`~scmixvae.singlecell.module.MixVAE`. The priors and
the flow themselves are the domain-free ones of :mod:`scmixvae.mixture`; what is specific to
counts is where a VampPrior's pseudo-inputs live (the encoder's input space: after its own
``log1p``, with continuous covariates appended when they are encoded) and which covariates they
carry (fixed ones, taken from the cells they started from, as scvi-tools' SysVI does).
"""

from __future__ import annotations

import torch
from scvi.module._constants import MODULE_KEYS

from scmixvae.mixture import (
    DrawTerms,
    LatentFlow,
    MixtureNormal,
    MixtureOfGaussiansPrior,
    PriorName,
    StandardNormalPrior,
    VampPrior,
    flowed_terms,
    sample_components,
    validate_flow,
    validate_prior,
)

COMPONENT_KEY = "component"
UNTRANSFORMED_Z_KEY = "untran_z"
BASE_Z_KEY = "base_z"  # the mixture's draws before the latent flow
LOG_DET_KEY = "flow_log_det"
PSEUDO_QZ_KEY = "pseudo_qz"  # the VampPrior pseudo-inputs' posterior, from the same pass

# K of the VampPrior / MoG prior. SysVI uses 5; 20 was measured better (benchmarks/results/
# cookbook): at S = 1 it beat 5 on every seed of three datasets by +0.6 to +1.1 nats per cell
# and kept more biology in integration, at S = 5 it tied, for 3 % more epoch time
DEFAULT_N_PRIOR_COMPONENTS = 20


class PriorFlowMixin:
    """A latent prior chosen by name, an optional flow shared by the components, the latent
    draws through it and the posterior's densities at them.

    Needs ``z_encoder``, ``n_latent``, ``encode_covariates`` and ``batch_representation`` of
    :class:`~scmixvae.singlecell.module.MixVAE`.
    """

    # whether the latent's prior may be chosen (scANVI's z1 has a label-conditional prior)
    latent_prior_choice = True

    def _build_prior_and_flow(
        self,
        prior: PriorName,
        n_prior_components: int | None,
        n_pseudo_input: int,
        pseudo_inputs: torch.Tensor | None,
        pseudo_input_batch: torch.Tensor | None,
        pseudo_input_cat_covs: torch.Tensor | None,
        flow_steps: int,
    ) -> None:
        validate_prior(prior, n_prior_components)
        validate_flow(flow_steps, self.n_latent)
        if prior != "standard_normal" and not self.latent_prior_choice:
            raise ValueError(
                f"prior={prior!r} is not available for {type(self).__name__}: its prior on the "
                "latent is scANVI's label-conditional p(z1 | z2, y); use "
                "prior='standard_normal' (flow_steps works)."
            )
        self.prior_name = prior
        self.flow_steps = flow_steps
        k = DEFAULT_N_PRIOR_COMPONENTS if n_prior_components is None else n_prior_components
        if prior == "standard_normal":
            self.prior = StandardNormalPrior(self.n_latent)
        elif prior == "mog":
            self.prior = MixtureOfGaussiansPrior(self.n_latent, k)
        else:
            if pseudo_inputs is None:  # filled by the model from cells, or from a saved state
                pseudo_inputs = torch.zeros(k, n_pseudo_input)
            if pseudo_inputs.shape != (pseudo_inputs.shape[0], n_pseudo_input):
                raise ValueError(
                    f"pseudo_inputs must have shape [K, {n_pseudo_input}] (log1p counts and "
                    f"encoded continuous covariates), got {tuple(pseudo_inputs.shape)}."
                )
            k = pseudo_inputs.shape[0]
            batch = torch.zeros(k, 1) if pseudo_input_batch is None else pseudo_input_batch
            self.register_buffer("pseudo_input_batch", batch.reshape(k, 1).float())
            self.register_buffer(
                "pseudo_input_cat_covs",
                torch.zeros(k, 0) if pseudo_input_cat_covs is None else pseudo_input_cat_covs,
            )
            self.prior = VampPrior(pseudo_inputs, encode=self._encode_pseudo_inputs)
        self.flow = LatentFlow(self.n_latent, flow_steps) if flow_steps > 0 else None

    @property
    def has_pseudo_inputs(self) -> bool:
        """Whether the prior is a VampPrior (its pseudo-inputs go through the encoder)."""
        return isinstance(self.prior, VampPrior)

    def _pseudo_input_covariates(self) -> tuple:
        """The encoder's covariates for the pseudo-inputs, laid out as ``_encoder_inputs``
        lays out a minibatch's (the encoder reads them only when covariates are encoded)."""
        categorical = ()
        if self.encode_covariates and self.pseudo_input_cat_covs.shape[1]:
            categorical = tuple(self.pseudo_input_cat_covs.split(1, dim=1))
        if self.batch_representation == "embedding":
            return categorical
        return (self.pseudo_input_batch, *categorical)

    def _pseudo_encoder_input(self, u: torch.Tensor) -> torch.Tensor:
        """The pseudo-inputs as the encoder reads them (an encoded batch embedding appended)."""
        if self.encode_covariates and self.batch_representation == "embedding":
            from scvi import REGISTRY_KEYS

            batch_rep = self.compute_embedding(
                REGISTRY_KEYS.BATCH_KEY, self.pseudo_input_batch.long()
            )
            u = torch.cat([u, batch_rep], dim=-1)
        return u

    def _encode_pseudo_inputs(self, pseudo_inputs: torch.Tensor) -> MixtureNormal:
        """The mixture posterior of the pseudo-inputs, ``[S, K, D]`` (the VampPrior's parts)."""
        return self.z_encoder(
            self._pseudo_encoder_input(pseudo_inputs), *self._pseudo_input_covariates()
        )

    def _encode_with_pseudo_inputs(
        self, encoder_input: torch.Tensor, covariates: tuple
    ) -> tuple[MixtureNormal, MixtureNormal | None]:
        """Encode a minibatch and, in training, the pseudo-inputs in the same pass.

        One pass, so that batch normalisation normalises the pseudo-inputs with the minibatch's
        statistics (they are what the encoder sees in evaluation, through its running
        averages); encoded alone, ``K`` pseudo-inputs would be normalised by their own.
        Returns the minibatch's mixture and the pseudo-inputs' (``None`` when not training or
        without a VampPrior: the prior then encodes them itself).
        """
        if not (self.has_pseudo_inputs and self.training):
            return self.z_encoder(encoder_input, *covariates), None
        n_obs = encoder_input.shape[0]
        pseudo_covariates = self._pseudo_input_covariates()
        pairs = zip(covariates, pseudo_covariates, strict=True)
        joint = self.z_encoder(
            torch.cat([encoder_input, self._pseudo_encoder_input(self.prior.pseudo_inputs)]),
            *(torch.cat([c, p.to(c.dtype)]) for c, p in pairs),
        )
        loc, scale = joint.component_loc, joint.component_scale
        return (
            MixtureNormal(loc[:, :n_obs], scale[:, :n_obs]),
            MixtureNormal(loc[:, n_obs:], scale[:, n_obs:]),
        )

    def latent_log_prior(
        self, z: torch.Tensor, pseudo_posterior: MixtureNormal | None = None
    ) -> torch.Tensor:
        """:math:`\\log p(z)` of latent draws ``[..., D]`` under the model's prior."""
        if self.has_pseudo_inputs:
            return self.prior.log_prob(z, pseudo_posterior)
        return self.prior.log_prob(z)

    def flow_latent(self, z0: torch.Tensor) -> torch.Tensor:
        """The flow applied to base-mixture points ``[..., D]`` (the identity without a flow)."""
        return z0 if self.flow is None else self.flow(z0)[0]

    def _draw_latent(
        self,
        qz: MixtureNormal,
        n_samples: int,
        stratified: bool,
        n_sampled_components: int | None,
    ) -> dict:
        """Latent draws: ``[n_samples, A, B, D]`` from ``A`` components when ``stratified``
        (``A = n_sampled_components``, default all ``S``), else mixture draws
        ``[n_samples, B, D]`` (``[B, D]`` for one sample); through the flow when there is one
        (``base_z`` holds the draws before it, ``flow_log_det`` its log-determinant)."""
        component = None
        if stratified:
            component = sample_components(
                self.n_components, n_sampled_components, qz.batch_shape[0], qz.loc.device
            )
            untran_z = qz.rsample_components(component, n_samples)
            draws = (n_samples, component.shape[0])
        else:
            untran_z = qz.sample_mixture(n_samples if n_samples > 1 else ())
            draws = (n_samples,) if n_samples > 1 else ()
        base_z, log_det = untran_z, None
        if self.flow is not None:
            untran_z, log_det = self.flow(base_z)
        return {
            UNTRANSFORMED_Z_KEY: untran_z,
            COMPONENT_KEY: component,
            BASE_Z_KEY: base_z,
            LOG_DET_KEY: log_det,
            "draws": draws,
        }

    def posterior_terms(
        self, inference_outputs: dict, log_px_z: torch.Tensor, log_pz: torch.Tensor
    ) -> DrawTerms:
        """The posterior's densities at the stratified draws, with the model's terms.

        The mixture scores the draws before the flow; the flow's log-determinant then comes off
        every density (:func:`~scmixvae.mixture.flowed_terms`). The closed-form KL is passed
        only where it is exact: a standard-normal prior and no flow.
        """
        qz: MixtureNormal = inference_outputs[MODULE_KEYS.QZ_KEY]
        component = inference_outputs[COMPONENT_KEY]
        base = inference_outputs.get(BASE_Z_KEY)
        base = inference_outputs[UNTRANSFORMED_Z_KEY] if base is None else base
        # (scANVI's z1 has its own hierarchical prior, never N(0, I): no closed form there)
        closed_form = self.prior.closed_form_kl and self.flow is None and self.latent_prior_choice
        terms = qz.draw_terms(
            base,
            component,
            log_px_z=log_px_z,
            log_pz=log_pz,
            with_sub_mixture=self.objective == "some_to_some",
            kl_own=qz.kl_to_standard_normal(component) if closed_form else None,
        )
        log_det = inference_outputs.get(LOG_DET_KEY)
        return terms if log_det is None else flowed_terms(terms, log_det)
