"""MixSCVI: the scvi-tools model class of scVI with a mixture posterior trained by MISELBO."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
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
from scvi.module._constants import MODULE_KEYS
from scvi.utils import setup_anndata_dsp

from scmixvae.guards import NonFiniteLossGuard, RNGStateCheckpoint
from scmixvae.mixture import (
    DEFAULT_OBJECTIVE,
    MixtureNormal,
    NLLEstimator,
    Objective,
    component_responsibilities,
    jsd,
    sample_components,
)

from . import _compat
from .arches import freeze_mixture_encoder_for_query
from .importance import (
    importance_log_weights,
    likelihood_at_library,
    mixture_log_density_matrix,
    standard_normal_log_prob,
)
from .module import MixVAE, mixture_from_flat, validate_mixture_options
from .safety import atomic_save_dir, check_same_genes, check_shared_encoder_layout
from .validation import check_counts, warn_empty_cells_and_genes

logger = logging.getLogger(__name__)

ComponentSelection = int | Literal["all"] | None
DiagnosticMethod = Literal["means", "importance"]
# bound on the [draws, S, S, cells, latent] temporary of the divergence estimate
DIVERGENCE_ELEMENTS = 20_000_000


class MixSCVI(
    EmbeddingMixin,
    RNASeqMixin,
    VAEMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseMinifiedModeModelClass,
):
    """scVI with a mixture of ``S`` encoders trained by MISELBO :cite:p:`Kviman23`.

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
        **kwargs,
    ):
        validate_mixture_options(
            n_components, objective, shared_encoder, n_sampled_components, n_particles,
            gene_likelihood,
        )  # fmt: skip
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
            f"gene_likelihood: {gene_likelihood}, latent_distribution: {latent_distribution}."
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
                **self._module_kwargs,
            )
            self.module.minified_data_type = self.minified_data_type
        self.init_params_ = self._get_init_params(locals())

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

    def __repr__(self) -> str:
        # scvi-tools prints and returns ""; a string works in print(), logs and notebooks alike
        return self.summary_string

    @property
    def n_components(self) -> int:
        """Number of mixture components ``S``."""
        return self._module_kwargs["n_components"]

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
    def train(self, *args, callbacks: list | None = None, **kwargs):
        """Train with scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`.

        Every argument of ``SCVI.train`` works (``max_epochs``, ``batch_size``,
        ``early_stopping``, ``plan_kwargs``, ``accelerator``, ``devices``, ``strategy``,
        ``datamodule``, ...), plus Lightning's ``ckpt_path`` to resume from a checkpoint (pass a
        :class:`~lightning.pytorch.callbacks.ModelCheckpoint` in ``callbacks`` to write them).
        Two guards are added: checkpoints also hold the random-number generators, so a resumed
        run continues exactly as the uninterrupted one would; and a NaN or infinite loss stops
        training, restores the weights of the last complete epoch and raises
        :class:`~scmixvae.guards.TrainingDivergedError`.
        """
        if self.minified_data_type is not None:
            raise ValueError(
                "this model's AnnData is minified: it holds the stored posterior, not the counts, "
                "so there is nothing to train on. Train on the full AnnData (MixSCVI.load(..., "
                "adata=full)) and minify afterwards."
            )
        guard = NonFiniteLossGuard()
        callbacks = _compat.with_checkpoint_support(list(callbacks or []))
        callbacks += [guard, RNGStateCheckpoint()]
        result = super().train(*args, callbacks=callbacks, **kwargs)
        guard.raise_if_diverged()
        return result

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """Save the model like scvi-tools does, atomically.

        Files are written to a temporary directory beside ``dir_path`` and moved into place
        one by one, so a crash or a full disk during the save leaves the previous model
        loadable. The saved model holds the weights, the setup arguments and the gene names,
        never the data (unless ``save_anndata=True``). Arguments as
        :meth:`scvi.model.SCVI.save`.
        """
        atomic_save_dir(
            lambda tmp: super(MixSCVI, self).save(
                tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs
            ),
            dir_path,
            overwrite,
        )

    @classmethod
    def load(
        cls, dir_path: str, adata: AnnData | None = None, prefix: str | None = None, **kwargs
    ):
        """Load a saved model, checking that ``adata`` has exactly the genes it was trained on.

        Other problems (a missing folder, a pre-1.0 scvi-tools save, another model class) get
        scvi-tools' own errors.

        Raises
        ------
        GeneMismatchError
            If ``adata``'s genes (or their order) differ from the saved model's.
        ValueError
            If the model was saved with the shared encoder of scmixvae 0.1.0.
        """
        path = Path(dir_path) / f"{prefix or ''}model.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            check_shared_encoder_layout(saved, dir_path)
            if adata is not None:
                check_same_genes(
                    saved["var_names"], adata.var_names, f"the model saved in {dir_path}"
                )
        return super().load(dir_path, adata=adata, prefix=prefix, **kwargs)

    @classmethod
    def load_query_data(cls, adata: AnnData | None = None, reference_model=None, **kwargs):
        """Map a query onto a trained reference with scArches (scvi-tools' ``load_query_data``).

        Every option of :meth:`scvi.model.SCVI.load_query_data` works (``freeze_expression``,
        ``freeze_batchnorm_encoder``, ``freeze_dropout``, ``unfrozen``, ...). New batch
        categories get their own weights; training the returned model updates only what
        scArches updates: the new categories' weights (in the decoder, and in the encoders when
        the reference was trained with ``encode_covariates=True``) and the library encoder.
        The mixture's own encoder layers follow the same rules as scVI's.
        """
        model = super().load_query_data(adata, reference_model, **kwargs)
        if not kwargs.get("unfrozen", False):
            freeze_mixture_encoder_for_query(
                model.module.z_encoder,
                freeze_expression=kwargs.get("freeze_expression", True),
                freeze_batchnorm_encoder=kwargs.get("freeze_batchnorm_encoder", True),
            )
        return model

    def _check_if_trained(self, warn: bool = True, message: str | None = None):
        _compat.refuse_scanvi_conversion(message)
        if message is None:
            return super()._check_if_trained(warn=warn)
        return super()._check_if_trained(warn=warn, message=message)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None and self.adata is not None and adata is not self.adata:
            check_same_genes(self.adata.var_names, adata.var_names, "the model's training genes")
            is_new = self.get_anndata_manager(adata) is None
            if is_new and _compat.minify_type(adata) is None:  # a new AnnData: check its counts
                layer = self.adata_manager.registry["setup_args"].get("layer")
                check_counts(
                    _compat.count_matrix(adata, layer),
                    where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
                )
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def minify_adata(
        self,
        minified_data_type: str = ADATA_MINIFY_TYPE.LATENT_POSTERIOR,
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Minify the model's AnnData to the stored posterior, as :meth:`SCVI.minify_adata`.

        A mixture posterior needs every component: the means and variances of all ``S``
        components are computed here and stored, component-major, as
        ``adata.obsm[use_latent_qzm_key]`` and ``adata.obsm[use_latent_qzv_key]``, each of
        shape ``(n_cells, S * n_latent)`` (columns ``s * n_latent`` to ``(s + 1) * n_latent - 1``
        are component ``s``), then registered as scvi-tools does. The latent representation,
        normalised expression and differential expression then work without the counts.
        """
        loc, var = self.get_latent_representation(component="all", return_dist=True)
        self.adata.obsm[use_latent_qzm_key] = loc.reshape(loc.shape[0], -1)
        self.adata.obsm[use_latent_qzv_key] = var.reshape(var.shape[0], -1)
        super().minify_adata(minified_data_type, use_latent_qzm_key, use_latent_qzv_key)

    # ------------------------------------------------------------------------------------------
    def _minibatches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        if dataloader is not None:
            return dataloader
        adata = self._validate_anndata(adata)
        return self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)

    def _posterior(self, outputs: dict) -> MixtureNormal:
        """The mixture posterior from inference outputs (``qz``, or scvi-tools' legacy
        ``qzm`` / ``qzv``: the flat components, or one Gaussian)."""
        if MODULE_KEYS.QZ_KEY in outputs:
            return outputs[MODULE_KEYS.QZ_KEY]
        qzm, qzv = outputs[MODULE_KEYS.QZM_KEY], outputs[MODULE_KEYS.QZV_KEY]
        if qzm.shape[-1] == self.module.n_latent:
            return MixtureNormal(qzm.unsqueeze(0), qzv.sqrt().unsqueeze(0))
        return mixture_from_flat(qzm, qzv, self.n_components)

    @torch.inference_mode()
    def _mixtures(self, adata, indices, batch_size, dataloader=None):
        """Yield ``(tensors, qz)`` per minibatch, in eval mode."""
        self._check_if_trained(warn=False)
        self.module.eval()
        for tensors in self._minibatches(adata, indices, batch_size, dataloader):
            inputs = self.module._get_inference_input(tensors)
            yield tensors, self._posterior(self.module.inference(**inputs))

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
        component: ComponentSelection = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent representation of each cell.

        Parameters
        ----------
        adata, indices, batch_size, dataloader
            As :meth:`scvi.model.SCVI.get_latent_representation`.
        give_mean
            Return means; ``False`` returns one draw from the selected distribution.
        mc_samples
            Draws averaged for the mean of a ``latent_distribution="ln"`` model, as SCVI.
        return_dist
            Return ``(mean, variance)`` of the Gaussian latent instead of the mean.
        component
            ``None``: the mixture (mean of the component means; variance by the law of total
            variance). ``k``: component ``k`` alone. ``"all"``: every component, arrays of shape
            ``(n_cells, S, n_latent)``.

        Returns
        -------
        ``(n_cells, n_latent)`` (``(n_cells, S, n_latent)`` for ``component="all"``), or a
        ``(mean, variance)`` pair.
        """
        self._check_component(component)
        transform = self.module._z_transformation
        means, variances = [], []
        for _, qz in self._mixtures(adata, indices, batch_size, dataloader):
            if component is None:
                mean, var = qz.loc, qz.variance
                if self.module.latent_distribution == "ln" and give_mean and not return_dist:
                    mean = transform(qz.sample_mixture(mc_samples)).mean(0)
                draw = transform(qz.sample_mixture(())) if not give_mean else None
            elif component == "all":
                mean, var = (
                    qz.component_loc.transpose(0, 1),
                    qz.component_scale.square().transpose(0, 1),
                )
                draw = transform(qz.rsample(()).transpose(0, 1)) if not give_mean else None
            else:
                mean, var = qz.component_loc[component], qz.component_scale[component].square()
                draw = transform(qz.component(component).sample()) if not give_mean else None
            means.append((mean if give_mean or return_dist else draw).cpu())
            variances.append(var.cpu())
        mean = torch.cat(means).numpy()
        if return_dist:
            return mean, torch.cat(variances).numpy()
        return mean

    def _check_component(self, component: ComponentSelection) -> None:
        if component is None or component == "all":
            return
        if not isinstance(component, int | np.integer) or not 0 <= component < self.n_components:
            raise ValueError(
                f"component must be None, 'all' or an integer in [0, {self.n_components}), "
                f"got {component!r}."
            )

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
        :meth:`differential_abundance`.
        """
        self._check_if_trained(warn=False)
        indices = None if indices is None or len(indices) == 0 else indices
        loc, var = self.get_latent_representation(
            adata, indices=indices, batch_size=batch_size, component="all", return_dist=True
        )
        loc = torch.as_tensor(loc.reshape(-1, loc.shape[-1]), device=self.device)
        scale = torch.as_tensor(var.reshape(-1, var.shape[-1]), device=self.device).sqrt()
        dist = torch.distributions
        components = dist.Normal(loc, scale) if dof is None else dist.StudentT(dof, loc, scale)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(loc.shape[0], device=self.device)),
            dist.Independent(components, 1),
        )

    @torch.inference_mode()
    def get_elbo(self, *args, **kwargs):
        """The model's bound on the data, from draws of every component (scvi-tools' API).

        Arguments and return type as :meth:`scvi.model.SCVI.get_elbo`. Unlike training steps
        with ``n_sampled_components``, every component draws here, so the estimate has no
        component-sampling noise.
        """
        kwargs.setdefault("inference_kwargs", {"n_sampled_components": None})
        return super().get_elbo(*args, **kwargs)

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1_000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
        estimator: NLLEstimator = "mixture",
        n_mc_samples_per_pass: int | None = None,
        **kwargs,
    ) -> np.float64 | torch.Tensor:
        """Importance-sampled marginal log-likelihood with the mixture as proposal.

        Parameters
        ----------
        n_mc_samples
            Total importance samples per cell, split evenly over the components.
        estimator
            ``"mixture"`` (default): one log-mean-exp over all draws, the tighter estimate.
            ``"per_component"``: mean over components of each one's log-mean-exp, as in the
            method's reference code.
        n_mc_samples_per_pass
            Draws per component per forward pass; by default sized to keep a pass under ~1 GB.
        **kwargs
            Other arguments of :meth:`scvi.model.SCVI.get_marginal_ll`.

        Returns
        -------
        The mean over cells as a :class:`numpy.float64` (higher is better), as SCVI, or a tensor
        per cell with ``return_mean=False``. Unlike scvi-tools 1.4, the mean is over cells, not
        over minibatch means. It decodes ``n_mc_samples`` draws per cell: on large data, pass
        ``indices`` (a subset of cells) for a quick estimate.
        """
        self.module.eval()
        per_cell = super().get_marginal_ll(
            adata=adata,
            indices=indices,
            n_mc_samples=n_mc_samples,
            batch_size=batch_size,
            return_mean=False,
            dataloader=dataloader,
            estimator=estimator,
            n_mc_samples_per_pass=n_mc_samples_per_pass,
            **kwargs,
        )
        # scvi-tools averages per-minibatch means, which over-weights a short last minibatch
        return np.float64(per_cell.mean()) if return_mean else per_cell

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
        posterior as its proposal density (see :mod:`scmixvae.singlecell.importance`). ``qz``
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
        log_qz = mixture_log_density_matrix(anchor_mixture, z).cpu()
        log_px_z = []
        for tensors in self._make_data_loader(
            adata=adata, indices=indices[anchors], batch_size=1, **data_loader_kwargs
        ):
            x_anchor = tensors[REGISTRY_KEYS.X_KEY].to(self.device)  # [1, G]
            likelihood = likelihood_at_library(px, self.module.gene_likelihood, x_anchor.sum(-1))
            log_px_z.append(likelihood.log_prob(x_anchor).sum(-1).reshape(-1).cpu())
        return importance_log_weights(
            standard_normal_log_prob(z).cpu(), torch.stack(log_px_z, dim=1), log_px, log_qz,
            truncation,
        )  # fmt: skip


def _check_method(method: str) -> None:
    if method not in ("means", "importance"):
        raise ValueError(f"method must be 'means' or 'importance', got {method!r}.")
