"""MixSCVI: the scvi-tools model class of scVI with a mixture posterior trained by MISELBO."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data._constants import ADATA_MINIFY_TYPE
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi.model._utils import _init_library_size
from scvi.model.base import (
    ArchesMixin,
    BaseMinifiedModeModelClass,
    EmbeddingMixin,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi.utils import setup_anndata_dsp

from scmixvae.mixture import DEFAULT_OBJECTIVE, Objective, PriorName, validate_flow, validate_prior

from . import _compat
from .mixture_model import MixtureModelMixin
from .module import MixVAE, validate_mixture_options
from .module_priors import DEFAULT_N_PRIOR_COMPONENTS
from .pseudo_inputs import (
    choose_cells,
    is_restoring,
    placeholder_pseudo_inputs,
    pseudo_inputs_from_cells,
)
from .validation import check_counts, warn_empty_cells_and_genes


class MixSCVI(
    MixtureModelMixin,
    EmbeddingMixin,
    RNASeqMixin,
    VAEMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseMinifiedModeModelClass,
):
    """scVI with a mixture of ``S`` encoders trained by MISELBO (Kviman et al., ICML 2023).

    A drop-in replacement for :class:`scvi.model.SCVI`: the same ``setup_anndata``, training
    options, likelihoods and downstream methods (normalised expression, differential
    expression, marginal likelihood, save/load, reference mapping, minification), with
    ``q(z | x)`` a uniform mixture of ``n_components`` Gaussian encoders that share scVI's
    decoder.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`. ``None`` with ``registry``: the module
        is built when :meth:`train` is given a ``datamodule``, as for SCVI.
    registry
        Registry of a datamodule, for training without AnnData.
    n_components
        Number of mixture components ``S``; ``1`` is scVI.
    objective
        ``"miselbo"`` (the method), ``"ensemble"`` (each encoder trained on its own ELBO) or
        ``"some_to_some"`` (each draw against the mixture of the components drawn with it).
    shared_encoder
        Amortize the components (Hotti et al., 2024): every component is scVI's encoder with
        its one-hot code added to the input of the last hidden layer, so the layers before it
        and that layer's product with the genes run once per cell. A component then costs
        ``n_hidden + 2 * n_latent`` parameters instead of a whole encoder, so ``n_components``
        can reach the hundreds. ``n_head_hidden`` (a model keyword) selects the layout of
        scmixvae 0.1.0, a coded head of that width after scVI's layers.
    n_sampled_components
        Components each cell draws from per training step (``A``). ``None``: all ``S`` (the
        stratified MISELBO of the paper). ``A < S``: ``A`` distinct components per cell,
        chosen uniformly, each draw still weighed against the whole mixture (Some-to-All): an
        unbiased estimate of the same bound at ``A / S`` of the decoder's cost.
    n_particles
        Draws per component per training step.
    importance_weighted
        Importance-weighted MISELBO over the ``n_particles`` draws of each component.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood
        As :class:`scvi.model.SCVI` (same defaults); ``gene_likelihood="normal"`` is refused
        (the bounds are for counts).
    use_observed_lib_size
        Use the observed library size (default) instead of a latent one.
    latent_distribution
        ``"normal"``, or ``"ln"``: the decoder sees the softmax of the latent, as in SCVI.
    prior
        The latent's prior, named as scvi-tools' SysVI: ``"standard_normal"`` (scVI's, the
        default), ``"vamp"`` (a VampPrior: the mixture posterior of ``n_prior_components``
        learned pseudo-inputs, which start as real cells in the encoder's input space and keep
        those cells' batch and categorical covariates, fixed) or ``"mog"`` (a learned mixture
        of ``n_prior_components`` Gaussians, as MrVI's).
    n_prior_components
        ``K`` of the VampPrior or the Gaussian mixture (default 20; SysVI's is 5, which
        held-out likelihood measured too few with one encoder).
    pseudoinputs_data_indices
        Cells (row indices of ``adata``) the VampPrior's pseudo-inputs start from; default
        ``n_prior_components`` cells drawn at random (reproducible under
        ``scvi.settings.seed``).
    flow_steps
        Steps of an inverse autoregressive flow shared by the components (0: none, the
        default). The decoder and the prior see the flowed latent; each draw's mixture density
        loses the flow's log-determinant. ``prior="vamp"`` with ``flow_steps > 0`` is the
        method's composite recipe.
    **kwargs
        Passed to :class:`~scmixvae.singlecell.module.MixVAE` / :class:`scvi.module.VAE`
        (``batch_representation``, ``encode_covariates``, ``extra_encoder_kwargs``, ...).

    Examples
    --------
    >>> adata = scmixvae.datasets.load_counts("pbmc3k")
    >>> scmixvae.MixSCVI.setup_anndata(adata, layer="counts")
    >>> model = scmixvae.MixSCVI(adata, n_components=5)
    >>> model.train(max_epochs=100)
    >>> adata.obsm["X_mixscvi"] = model.get_latent_representation()
    """

    _module_cls = MixVAE
    # where a minified AnnData keeps the stored posterior (every component, component-major)
    _LATENT_QZM_KEY = "mixscvi_latent_qzm"
    _LATENT_QZV_KEY = "mixscvi_latent_qzv"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_components: int = 5,
        objective: Objective = DEFAULT_OBJECTIVE,
        shared_encoder: bool = False,
        n_sampled_components: int | None = None,
        n_particles: int = 1,
        importance_weighted: bool = False,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        use_observed_lib_size: bool = True,
        latent_distribution: Literal["normal", "ln"] = "normal",
        prior: PriorName = "standard_normal",
        n_prior_components: int | None = None,
        pseudoinputs_data_indices: np.ndarray | None = None,
        flow_steps: int = 0,
        **kwargs,
    ):
        validate_mixture_options(
            n_components, objective, shared_encoder, n_sampled_components, n_particles,
            gene_likelihood,
        )  # fmt: skip
        validate_prior(prior, n_prior_components)
        validate_flow(flow_steps, n_latent)
        if pseudoinputs_data_indices is not None and prior != "vamp":
            raise ValueError(
                f"pseudoinputs_data_indices is for prior='vamp' only (got prior={prior!r})."
            )
        if prior != "standard_normal" and n_prior_components is None:
            # K written into the saved init params, so that a saved model restores its own K
            # even if the default moves
            n_prior_components = (
                DEFAULT_N_PRIOR_COMPONENTS
                if pseudoinputs_data_indices is None
                else len(np.asarray(pseudoinputs_data_indices).reshape(-1))
            )
        if adata is None and prior == "vamp":
            raise ValueError(
                "prior='vamp' needs an AnnData: its pseudo-inputs start on real cells; trained "
                "from a datamodule (a SOMA store) use prior='mog' and/or flow_steps."
            )
        if adata is None and registry is None:  # the module is built by train(datamodule=...)
            _compat.init_without_data(self)
        else:
            super().__init__(adata, registry)
        self._module_kwargs = {
            "n_components": n_components,
            "objective": objective,
            "shared_encoder": shared_encoder,
            "n_sampled_components": n_sampled_components,
            "n_particles": n_particles,
            "importance_weighted": importance_weighted,
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": dispersion,
            "gene_likelihood": gene_likelihood,
            "use_observed_lib_size": use_observed_lib_size,
            "latent_distribution": latent_distribution,
            "prior": prior,
            "n_prior_components": n_prior_components,
            "flow_steps": flow_steps,
            **kwargs,
        }
        drawn = "all" if n_sampled_components is None else n_sampled_components
        self._model_summary_string = (
            f"MixSCVI model: {n_components} mixture components "
            f"({'shared encoder' if shared_encoder else 'separate encoders'}), objective "
            f"'{objective}', {drawn} component(s) sampled per step, {n_particles} draw(s) per "
            "sampled component.\n"
            f"n_hidden: {n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, "
            f"dropout_rate: {dropout_rate}, dispersion: {dispersion}, "
            f"gene_likelihood: {gene_likelihood}, latent_distribution: {latent_distribution}, "
            f"prior: {prior}, flow_steps: {flow_steps}."
        )
        if self._module_init_on_train:
            if not use_observed_lib_size:
                raise ValueError(
                    "use_observed_lib_size=False needs the library-size prior of an AnnData; "
                    "without one (datamodule training) use the observed library size."
                )
            self.module = None
            warnings.warn(
                "Model was initialized without `adata`. The module will be initialized when "
                "calling `train`. This behavior is experimental and may change in the future.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        else:
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_batch=self.summary_stats.n_batch,
                n_labels=self.summary_stats.n_labels,
                n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
                n_cats_per_cov=self._n_cats_per_cov(),
                **self._library_options(use_observed_lib_size),
                **{
                    **self._module_kwargs,
                    **self._pseudo_inputs(prior, n_prior_components, pseudoinputs_data_indices),
                },
            )
            self.module.minified_data_type = self.minified_data_type
        self.init_params_ = self._get_init_params(locals())

    def _pseudo_inputs(self, prior: str, n_prior_components: int, indices) -> dict:
        """The VampPrior's starting pseudo-inputs and covariates (placeholders on restore).

        ``n_prior_components`` is the K that ``__init__`` resolved (never ``None``).
        """
        if prior != "vamp":
            return {}
        if is_restoring() or self.minified_data_type is not None:
            return placeholder_pseudo_inputs(self.adata_manager, n_prior_components)
        cells = choose_cells(self.summary_stats.n_cells, n_prior_components, indices)
        return {
            "n_prior_components": len(cells),
            **pseudo_inputs_from_cells(self.adata_manager, cells, self._module_kwargs),
        }

    def _n_cats_per_cov(self) -> list[int] | None:
        registries = self.registry["field_registries"]
        states = registries.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
        return list(states["n_cats_per_key"]) if states.get("n_cats_per_key") else None

    def _library_options(self, use_observed_lib_size: bool) -> dict:
        use_size_factor_key = self.registry_["setup_args"][f"{REGISTRY_KEYS.SIZE_FACTOR_KEY}_key"]
        means, variances = None, None
        if (
            not use_size_factor_key
            and self.minified_data_type != ADATA_MINIFY_TYPE.LATENT_POSTERIOR
            and not use_observed_lib_size
        ):
            means, variances = _init_library_size(self.adata_manager, self.summary_stats.n_batch)
        return {
            "use_size_factor_key": use_size_factor_key,
            "library_log_means": means,
            "library_log_vars": variances,
        }

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs,
    ):
        """%(summary)s.

        Counts are checked first: NaN, infinite, negative and clearly normalised or
        log-transformed values raise a :class:`~scmixvae.singlecell.validation.CountDataError`
        naming the problem; mostly-integer values (ambient-RNA-corrected counts) warn once.
        An AnnCollection wrapped in :class:`scvi.dataloaders.CollectionAdapter` works as in
        scvi-tools.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        %(param_batch_key)s
        %(param_labels_key)s
        %(param_size_factor_key)s
        %(param_cat_cov_keys)s
        %(param_cont_cov_keys)s
        """
        # first, so that only the arguments are recorded in the saved model, never the data
        setup_method_args = cls._get_setup_method_args(**locals())
        layers = _compat.layer_names(adata)
        if layer is not None and layer not in layers:
            raise KeyError(f"layer {layer!r} not in adata.layers (available: {layers}).")
        for key in [batch_key, labels_key, size_factor_key]:
            if key is not None and key not in adata.obs:
                raise KeyError(
                    f"{key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
                )
        for key in [*(categorical_covariate_keys or []), *(continuous_covariate_keys or [])]:
            if key not in adata.obs:
                raise KeyError(
                    f"covariate {key!r} is not a column of adata.obs "
                    f"(columns: {list(adata.obs.columns)})."
                )
        minify_type = _compat.minify_type(adata)
        if minify_type is None:  # a minified AnnData holds no counts to check
            counts = _compat.count_matrix(adata, layer)
            where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
            check_counts(counts, where=where)
            warn_empty_cells_and_genes(counts, where)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        if minify_type is not None:
            anndata_fields += cls._get_fields_for_adata_minification(minify_type)
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # training, saving, loading ------------------------------------------------------------------
