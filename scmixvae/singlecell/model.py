"""MixSCVI: the scvi-tools model class of scVI with a mixture posterior trained by MISELBO."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi.model._utils import _init_library_size
from scvi.model.base import (
    BaseModelClass,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi.module._constants import MODULE_KEYS
from scvi.utils import setup_anndata_dsp

from scmixvae.mixture import (
    NLLEstimator,
    Objective,
    component_responsibilities,
    jsd,
    sample_components,
)

from .module import MixVAE
from .safety import (
    NonFiniteLossGuard,
    RNGStateCheckpoint,
    TrainingDivergedError,
    as_training_checkpoints,
    atomic_save_dir,
    check_same_genes,
)
from .validation import check_counts, warn_empty_cells_and_genes

logger = logging.getLogger(__name__)

ComponentSelection = int | Literal["all"] | None
# bound on the [draws, S, S, cells, latent] temporary of the divergence estimate
DIVERGENCE_ELEMENTS = 20_000_000


class MixSCVI(RNASeqMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """scVI with a mixture of ``S`` encoders trained by MISELBO :cite:p:`Kviman23`.

    A drop-in replacement for :class:`scvi.model.SCVI`: the same ``setup_anndata``, training
    options, likelihoods and downstream methods (normalised expression, differential expression,
    marginal likelihood, save/load), with ``q(z | x)`` a uniform mixture of ``n_components``
    Gaussian encoders that share scVI's decoder.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_components
        Number of mixture components ``S``; ``1`` is scVI.
    objective
        ``"miselbo"`` (the method), ``"ensemble"`` (each encoder trained on its own ELBO) or
        ``"some_to_some"`` (each draw against the mixture of the components drawn with it).
    shared_encoder
        Amortize the components: scVI's encoder layers run once per cell and a small head,
        conditioned on each component's code, gives every component's mean and variance
        (Hotti et al., 2024). A component then costs a few hundred parameters instead of a
        whole encoder, so ``n_components`` can reach the hundreds.
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
        As :class:`scvi.model.SCVI` (same defaults).
    use_observed_lib_size
        Use the observed library size (default) instead of a latent one.
    **kwargs
        Passed to :class:`~scmixvae.singlecell.module.MixVAE` / :class:`scvi.module.VAE`.

    Examples
    --------
    >>> adata = scmixvae.datasets.load_counts("pbmc3k")
    >>> scmixvae.MixSCVI.setup_anndata(adata, layer="counts")
    >>> model = scmixvae.MixSCVI(adata, n_components=5)
    >>> model.train(max_epochs=100)
    >>> adata.obsm["X_mixscvi"] = model.get_latent_representation()
    """

    _module_cls = MixVAE

    def __init__(
        self,
        adata: AnnData | None = None,
        n_components: int = 5,
        objective: Objective = "miselbo",
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
        **kwargs,
    ):
        if adata is None:
            raise ValueError("MixSCVI needs an AnnData registered with MixSCVI.setup_anndata.")
        super().__init__(adata)
        n_cats_per_cov = (
            self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).n_cats_per_key
            if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry
            else None
        )
        n_batch = self.summary_stats.n_batch
        use_size_factor_key = self.registry_["setup_args"][f"{REGISTRY_KEYS.SIZE_FACTOR_KEY}_key"]
        library_log_means, library_log_vars = None, None
        if not use_size_factor_key and not use_observed_lib_size:
            library_log_means, library_log_vars = _init_library_size(self.adata_manager, n_batch)
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_components=n_components,
            objective=objective,
            shared_encoder=shared_encoder,
            n_sampled_components=n_sampled_components,
            n_particles=n_particles,
            importance_weighted=importance_weighted,
            n_batch=n_batch,
            n_labels=self.summary_stats.n_labels,
            n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=n_cats_per_cov,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size,
            use_size_factor_key=use_size_factor_key,
            library_log_means=library_log_means,
            library_log_vars=library_log_vars,
            **kwargs,
        )
        drawn = "all" if n_sampled_components is None else n_sampled_components
        self._model_summary_string = (
            f"MixSCVI model: {n_components} mixture components "
            f"({'shared encoder' if shared_encoder else 'separate encoders'}), objective "
            f"'{objective}', {drawn} component(s) sampled per step, {n_particles} draw(s) per "
            "sampled component.\n"
            f"n_hidden: {n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, "
            f"dropout_rate: {dropout_rate}, dispersion: {dispersion}, "
            f"gene_likelihood: {gene_likelihood}."
        )
        self.init_params_ = self._get_init_params(locals())

    def __repr__(self) -> str:
        # scvi-tools prints and returns ""; a string works in print(), logs and notebooks alike
        return self.summary_string

    @property
    def n_components(self) -> int:
        """Number of mixture components ``S``."""
        return self.module.n_components

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

        Raw counts are required: the matrix is checked for finite, non-negative whole numbers
        and a :class:`~scmixvae.singlecell.validation.CountDataError` names what is wrong.

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
        if layer is not None and layer not in adata.layers:
            raise KeyError(
                f"layer {layer!r} not in adata.layers (available: {list(adata.layers)})."
            )
        for key in [batch_key, labels_key, size_factor_key]:
            if key is not None and key not in adata.obs:
                raise KeyError(f"{key!r} is not a column of adata.obs.")
        for key in [*(categorical_covariate_keys or []), *(continuous_covariate_keys or [])]:
            if key not in adata.obs:
                raise KeyError(f"covariate {key!r} is not a column of adata.obs.")
        counts = adata.X if layer is None else adata.layers[layer]
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        check_counts(counts, where=where)
        warn_empty_cells_and_genes(counts, where)
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # training, saving, loading ------------------------------------------------------------------
    def train(self, *args, callbacks: list | None = None, **kwargs):
        """Train with scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`.

        Every argument of ``SCVI.train`` works (``max_epochs``, ``batch_size``,
        ``early_stopping``, ``plan_kwargs``, ``accelerator``, ``devices``, ``strategy``, ...),
        plus Lightning's ``ckpt_path`` to resume from a checkpoint (pass a
        :class:`~lightning.pytorch.callbacks.ModelCheckpoint` in ``callbacks`` to write them).
        Two guards are added: checkpoints also hold the random-number generators, so a resumed
        run continues exactly as the uninterrupted one would; and a NaN or infinite loss stops
        training, restores the weights of the last complete epoch and raises
        :class:`~scmixvae.singlecell.safety.TrainingDivergedError`.
        """
        guard = NonFiniteLossGuard()
        callbacks = as_training_checkpoints(list(callbacks or []))
        callbacks += [guard, RNGStateCheckpoint()]
        result = super().train(*args, callbacks=callbacks, **kwargs)
        if guard.failure is not None:
            epoch, step = guard.failure
            raise TrainingDivergedError(
                f"the training loss became NaN or infinite in epoch {epoch} (step {step}); "
                f"training stopped and the weights at the end of epoch {guard.good_epoch} were "
                "restored. Lower the learning rate (plan_kwargs={'lr': ...}) or check the input."
            )
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
        loadable. Arguments as :meth:`scvi.model.SCVI.save`.
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

        Raises
        ------
        GeneMismatchError
            If ``adata``'s genes (or their order) differ from the saved model's.
        """
        if adata is not None:
            path = Path(dir_path) / f"{prefix or ''}model.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: not a saved model directory.")
            saved = torch.load(path, map_location="cpu", weights_only=False)
            check_same_genes(saved["var_names"], adata.var_names, f"the model saved in {dir_path}")
        return super().load(dir_path, adata=adata, prefix=prefix, **kwargs)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None and self.adata is not None and adata is not self.adata:
            check_same_genes(self.adata.var_names, adata.var_names, "the model's training genes")
            if self.get_anndata_manager(adata) is None:  # a new AnnData: check its counts
                layer = self.adata_manager.registry["setup_args"].get("layer")
                check_counts(
                    adata.X if layer is None else adata.layers[layer],
                    where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
                )
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

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

    @torch.inference_mode()
    def _mixtures(self, adata, indices, batch_size, dataloader=None):
        """Yield ``(tensors, qz)`` per minibatch, in eval mode."""
        self._check_if_trained(warn=False)
        self.module.eval()
        for tensors in self._minibatches(adata, indices, batch_size, dataloader):
            inputs = self.module._get_inference_input(tensors)
            outputs = self.module.inference(**inputs)
            yield tensors, outputs[MODULE_KEYS.QZ_KEY]

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
            Unused (the mixture mean is closed-form); kept for API compatibility.
        return_dist
            Return ``(mean, variance)`` instead of the mean.
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
        means, variances = [], []
        for _, qz in self._mixtures(adata, indices, batch_size, dataloader):
            if component is None:
                mean, var = qz.loc, qz.variance
                draw = qz.sample_mixture(()) if not give_mean else None
            elif component == "all":
                mean, var = (
                    qz.component_loc.transpose(0, 1),
                    qz.component_scale.square().transpose(0, 1),
                )
                draw = qz.rsample(()).transpose(0, 1) if not give_mean else None
            else:
                mean, var = qz.component_loc[component], qz.component_scale[component].square()
                draw = qz.component(component).sample() if not give_mean else None
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
        n_samples_per_component: int = 10,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Share of each cell's importance-sampled likelihood carried by each component.

        See :func:`scmixvae.mixture.component_responsibilities`. A component that sits on the
        cell's posterior gets most of the mass; uniform rows mean the components agree.

        Parameters
        ----------
        adata, indices, batch_size
            As :meth:`get_latent_representation`.
        n_samples_per_component
            Importance samples drawn from each component per cell; each costs one decoder pass.

        Returns
        -------
        ``(n_cells, S)``, rows summing to one.
        """
        self._check_if_trained(warn=False)
        self.module.eval()
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
        n_samples_per_component: int = 50,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-cell generalized Jensen–Shannon divergence of the components, ``(n_cells,)``.

        Equal to MISELBO − mean component ELBO; in ``[0, log S]``. Near 0 the components
        coincide (the mixture adds nothing); near ``log S`` they do not overlap. Estimated
        from ``n_samples_per_component`` draws of every component (no decoding).
        """
        out = []
        for _, qz in self._mixtures(adata, indices, batch_size):
            n_cells, n_latent = qz.component_loc.shape[1:]
            component = sample_components(self.n_components, None, n_cells, qz.loc.device)
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
    def get_elbo(self, *args, **kwargs):
        """The model's bound on the data, from draws of every component (scvi-tools' API).

        Arguments as :meth:`scvi.model.SCVI.get_elbo`. Unlike training steps with
        ``n_sampled_components``, every component draws here, so the estimate has no
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
    ) -> float | torch.Tensor:
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
        Mean over cells (higher is better), or a tensor per cell with ``return_mean=False``.
        Unlike scvi-tools 1.4, the mean is over cells, not over minibatch means.
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
        return float(per_cell.mean()) if return_mean else per_cell
