"""MixSCANVI: scvi-tools' SCANVI with the mixture posterior of MixSCVI, for label transfer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model import SCANVI

from scmixvae.mixture import DEFAULT_OBJECTIVE, Objective
from scmixvae.uncertainty import predictive_uncertainty

from . import _compat
from .mixture_model import MixtureModelMixin
from .model import MixSCVI
from .module import validate_mixture_options
from .scanvi_module import MixSCANVAE
from .validation import check_counts, check_labels_column


def refuse_latent_prior(prior: str) -> None:
    """MixSCANVI's ``z1`` prior is scANVI's ``p(z1 | z2, y)``: no other prior can be chosen."""
    if prior not in ("standard_normal", ""):
        raise ValueError(
            f"MixSCANVI keeps scANVI's label-conditional prior p(z1 | z2, y), so prior={prior!r} "
            "is not available (a MixSCVI with that prior cannot become a MixSCANVI); use "
            "prior='standard_normal' (flow_steps works)."
        )


class MixSCANVI(MixtureModelMixin, SCANVI):
    r"""scANVI with a mixture of ``S`` encoders trained by MISELBO, for label transfer.

    A drop-in for :class:`scvi.model.SCANVI`: the same ``setup_anndata``, ``from_scvi_model``
    (from a trained :class:`~scmixvae.MixSCVI`), semi-supervised training, ``predict``,
    scArches reference mapping, save/load and the inherited downstream methods, with
    ``q(z_1 | x)`` the mixture posterior of MixSCVI (see
    :class:`~scmixvae.singlecell.scanvi_module.MixSCANVAE`) and the mixture's methods of
    MixSCVI (``get_latent_representation(component=...)``, responsibilities, divergence,
    ``get_marginal_ll`` with the mixture as proposal).

    Predictions average the classifier over the components (the mixture predictive), and
    :meth:`get_label_uncertainty` splits the predictive entropy into the components'
    disagreement and the rest (:mod:`scmixvae.uncertainty`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Registry of a datamodule, as SCANVI.
    n_components, objective, shared_encoder, n_sampled_components
        The mixture, as :class:`~scmixvae.MixSCVI`.
    n_particles, importance_weighted
        Draws per component and their weighting, as :class:`~scmixvae.MixSCVI`.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood
        As :class:`scvi.model.SCANVI`.
    use_observed_lib_size, linear_classifier, datamodule
        As :class:`scvi.model.SCANVI`.
    flow_steps
        (a model keyword) A latent flow on ``z_1`` shared by the components, as MixSCVI's;
        the classifier reads the flowed latent. ``prior`` must stay ``"standard_normal"``:
        :math:`z_1`'s prior is scANVI's :math:`p(z_1 \mid z_2, y)`.
    **model_kwargs
        Passed to :class:`~scmixvae.singlecell.scanvi_module.MixSCANVAE` (``y_prior``,
        ``classifier_parameters``, ``latent_distribution``, ``n_head_hidden``, ...).

    Examples
    --------
    >>> scmixvae.MixSCVI.setup_anndata(ref, layer="counts", batch_key="batch")
    >>> mixscvi = scmixvae.MixSCVI(ref, n_components=5)
    >>> mixscvi.train()
    >>> model = scmixvae.MixSCANVI.from_scvi_model(
    ...     mixscvi, unlabeled_category="Unknown", labels_key="cell_type"
    ... )
    >>> model.train(max_epochs=20)
    >>> probs, uncertainty = model.predict(soft=True, return_uncertainty=True)
    """

    _module_cls = MixSCANVAE
    _LATENT_QZM_KEY = "mixscanvi_latent_qzm"
    _LATENT_QZV_KEY = "mixscanvi_latent_qzv"

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
        linear_classifier: bool = False,
        datamodule=None,
        **model_kwargs,
    ):
        validate_mixture_options(
            n_components, objective, shared_encoder, n_sampled_components, n_particles,
            gene_likelihood,
        )  # fmt: skip
        refuse_latent_prior(model_kwargs.get("prior", "standard_normal"))
        if model_kwargs.pop("pseudoinputs_data_indices", None) is not None:
            refuse_latent_prior("vamp")
        model_kwargs.pop("n_prior_components", None)  # only a VampPrior or MoG prior has one
        self._module_kwargs = {"n_components": n_components}
        super().__init__(
            adata,
            registry,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size,
            linear_classifier=linear_classifier,
            datamodule=datamodule,
            n_components=n_components,
            objective=objective,
            shared_encoder=shared_encoder,
            n_sampled_components=n_sampled_components,
            n_particles=n_particles,
            importance_weighted=importance_weighted,
            **model_kwargs,
        )
        drawn = "all" if n_sampled_components is None else n_sampled_components
        self._model_summary_string = (
            f"MixSCANVI model: {n_components} mixture components "
            f"({'shared encoder' if shared_encoder else 'separate encoders'}), objective "
            f"'{objective}', {drawn} component(s) sampled per step.\n"
            f"unlabeled_category: {self.unlabeled_category_}, n_labels: {self.n_labels}, "
            f"n_hidden: {n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, "
            f"dropout_rate: {dropout_rate}, dispersion: {dispersion}, "
            f"gene_likelihood: {gene_likelihood}."
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str,
        unlabeled_category: str,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        use_minified: bool = True,
        **kwargs,
    ):
        """Register ``adata`` as :meth:`scvi.model.SCANVI.setup_anndata` does, checking first.

        The counts are checked as for :meth:`MixSCVI.setup_anndata`. The labels column must
        exist; it may be wholly unlabelled (a query; :meth:`from_scvi_model` asks for labels).
        An ``unlabeled_category`` absent from the column is allowed (a fully labelled
        reference, as in scvi-tools) unless it differs from one of the column's values only in
        case or spaces (``"unknown"`` for ``"Unknown"``): those cells would silently become a
        cell type.
        """
        # scArches' load_query_data lets a query lack the labels column (all unlabeled)
        missing_allowed = kwargs.get("allow_missing_labels", False) and labels_key not in (
            adata.obs if adata is not None else {}
        )
        if adata is not None and not missing_allowed:
            check_labels_column(adata, labels_key, unlabeled_category, require_labelled=False)
        if adata is not None:
            for key in [batch_key, size_factor_key, *(categorical_covariate_keys or [])]:
                if key is not None and key not in adata.obs:
                    raise KeyError(f"{key!r} is not a column of adata.obs.")
            if _compat.minify_type(adata) is None:
                where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
                if layer is not None and layer not in _compat.layer_names(adata):
                    raise KeyError(f"layer {layer!r} not in adata.layers.")
                check_counts(_compat.count_matrix(adata, layer), where=where)
        return super().setup_anndata(
            adata,
            labels_key=labels_key,
            unlabeled_category=unlabeled_category,
            layer=layer,
            batch_key=batch_key,
            size_factor_key=size_factor_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
            use_minified=use_minified,
            **kwargs,
        )

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model: MixSCVI,
        unlabeled_category: str,
        labels_key: str | None = None,
        adata: AnnData | None = None,
        registry: dict | None = None,
        **scanvi_kwargs,
    ) -> MixSCANVI:
        """A MixSCANVI carrying every trained weight of a :class:`~scmixvae.MixSCVI`.

        As :meth:`scvi.model.SCANVI.from_scvi_model`: the mixture's settings (``S``, encoder
        kind, ``n_sampled_components``, objective) come from ``scvi_model``; the classifier and
        the ``z2`` hierarchy start untrained. Every weight of ``scvi_model`` is checked to have
        arrived unchanged.

        Raises
        ------
        TypeError
            If ``scvi_model`` is not a MixSCVI.

        Warns
        -----
        UserWarning
            If it was never trained (as SCANVI; the conversion still happens).
        """
        if not isinstance(scvi_model, MixSCVI):
            raise TypeError(
                f"MixSCANVI.from_scvi_model needs a scmixvae.MixSCVI, got "
                f"{type(scvi_model).__name__}; for scvi-tools' SCVI use scvi.model.SCANVI."
            )
        refuse_latent_prior(scvi_model.module.prior_name if scvi_model.module else "")
        # As SCANVI: an untrained reference converts with a warning (scvi-tools' own tests do
        # this); its components start from different random weights and only the training
        # that follows makes them a fitted mixture.
        scvi_model._check_if_trained(
            message="the MixSCVI given hasn't been trained yet: its mixture components are "
            "untrained; train it first for scANVI's usual workflow."
        )
        data = adata if adata is not None else scvi_model.adata
        key = labels_key or scvi_model.registry["setup_args"].get("labels_key")
        if data is not None:
            check_labels_column(data, key, unlabeled_category)
        with _compat.converting_to_mixscanvi():
            model = super().from_scvi_model(
                scvi_model, unlabeled_category, labels_key, adata, registry, **scanvi_kwargs
            )
        source = scvi_model.module.state_dict()
        target = model.module.state_dict()
        lost = [k for k, v in source.items() if k not in target or not torch.equal(v, target[k])]
        if lost:
            raise RuntimeError(f"weights of the MixSCVI did not carry over: {lost[:5]}")
        return model

    def train(self, *args, n_samples_per_label: float | None = None, **kwargs):
        """Semi-supervised training, as :meth:`scvi.model.SCANVI.train`, with MixSCVI's guards
        (exact resume, NaN restore); see :meth:`MixSCVI.train <scmixvae.MixSCVI.train>`."""
        kwargs["callbacks"] = _compat.with_label_subsampling(
            list(kwargs.get("callbacks") or []), n_samples_per_label
        )
        return super().train(*args, n_samples_per_label=n_samples_per_label, **kwargs)

    # prediction -------------------------------------------------------------------------------
    @torch.inference_mode()
    def get_component_label_probabilities(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
        n_samples: int = 10,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
    ) -> np.ndarray:
        """Each component's label probabilities, ``(S, n_cells, n_labels)``.

        ``use_posterior_mean=True``: the classifier at each component's mean;
        ``False``: averaged over ``n_samples`` draws from each component.
        """
        # As SCANVI.predict: a query model straight from load_query_data (reference weights,
        # new batch weights untrained) may predict; warn, do not refuse.
        self._check_if_trained(warn=True)
        self.module.eval()
        out = []
        for tensors in self._minibatches(adata, indices, batch_size, dataloader):
            out.append(
                self.module.component_probabilities(
                    tensors[REGISTRY_KEYS.X_KEY],
                    tensors[REGISTRY_KEYS.BATCH_KEY],
                    tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
                    tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
                    use_posterior_mean=use_posterior_mean,
                    n_samples=n_samples,
                ).cpu()
            )
        return torch.cat(out, dim=1).numpy()

    def get_label_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
        n_samples: int = 10,
    ) -> pd.DataFrame:
        """Per-cell uncertainty of the predicted label (:func:`scmixvae.uncertainty.
        predictive_uncertainty`): ``confidence``, ``entropy`` (total), ``disagreement`` (between
        components: the mutual information, 0 when they agree) and ``expected_entropy``."""
        probs = self.get_component_label_probabilities(
            adata, indices, batch_size, use_posterior_mean, n_samples
        )
        return self._uncertainty_frame(probs, adata, indices)

    def _uncertainty_frame(self, component_probs, adata, indices) -> pd.DataFrame:
        frame = predictive_uncertainty(component_probs)
        names = self._validate_anndata(adata).obs_names
        frame.index = names if indices is None else names[np.asarray(indices)]
        return frame

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
        ig_interpretability: bool = False,
        ig_args: dict | None = None,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
        n_samples: int = 10,
        return_uncertainty: bool = False,
    ):
        r"""Labels from the mixture predictive :math:`\frac1S \sum_s p_s(y \mid x)`.

        Arguments as :meth:`scvi.model.SCANVI.predict`, plus:

        Parameters
        ----------
        use_posterior_mean
            ``True`` (default): :math:`p_s` is the classifier at component ``s``'s mean.
            ``False``: the classifier averaged over ``n_samples`` draws from each component
            (stratified, as the bound).
        n_samples
            Draws per component with ``use_posterior_mean=False``.
        return_uncertainty
            Also return :meth:`get_label_uncertainty`'s frame for the same cells.

        Returns
        -------
        Labels (``soft=False``) or a cells x labels frame of probabilities, and with
        ``return_uncertainty`` a pair ``(prediction, uncertainty)``.
        """
        if ig_interpretability:
            if return_uncertainty:
                raise ValueError("return_uncertainty does not combine with ig_interpretability.")
            return super().predict(
                adata, indices, soft, batch_size, use_posterior_mean, ig_interpretability,
                ig_args, dataloader,
            )  # fmt: skip
        component_probs = self.get_component_label_probabilities(
            adata, indices, batch_size, use_posterior_mean, n_samples, dataloader
        )
        probs = component_probs.mean(0)
        names = self._label_mapping[: probs.shape[1]]
        if soft:
            obs_names = self._validate_anndata(adata).obs_names
            index = obs_names if indices is None else obs_names[np.asarray(indices)]
            prediction = pd.DataFrame(probs, columns=names, index=index)
        else:
            prediction = np.asarray(names)[probs.argmax(1)]
        if not return_uncertainty:
            return prediction
        return prediction, self._uncertainty_frame(component_probs, adata, indices)
