"""Scanpy-style one-liners: ``scmixvae.tl.mixscvi(adata)`` fills ``adata.obsm``."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from anndata import AnnData

from .singlecell.model import MixSCVI


def mixscvi(
    adata: AnnData,
    n_components: int = 5,
    shared_encoder: bool = False,
    n_sampled_components: int | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    continuous_covariate_keys: list[str] | None = None,
    max_epochs: int | None = None,
    key_added: str = "X_mixscvi",
    copy: bool = False,
    diagnostics: Literal["means", "importance"] = "means",
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
) -> MixSCVI:
    """Train :class:`~scmixvae.MixSCVI` on ``adata`` and store its outputs in ``adata``.

    After it, ``sc.pp.neighbors(adata, use_rep=key_added)``, ``sc.tl.leiden`` and
    ``sc.tl.umap`` work unchanged.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``.X`` or in ``layer``.
    n_components
        Number of mixture components ``S``.
    shared_encoder
        Amortize the components over one encoder (cheap large ``S``); see :class:`MixSCVI`.
    n_sampled_components
        Components each cell draws from per training step (``None``: all ``S``).
    layer, batch_key, labels_key, categorical_covariate_keys, continuous_covariate_keys
        Passed to :meth:`MixSCVI.setup_anndata`.
    max_epochs
        Training epochs (scvi-tools' heuristic when ``None``).
    key_added
        Prefix of every key written.
    copy
        Work on a copy of ``adata`` (reachable as ``model.adata``) and leave ``adata`` as is.
    diagnostics
        How the responsibilities and the divergence are computed: ``"means"`` (default) from
        the components' closed-form densities at their means, seconds for 10^4 cells;
        ``"importance"`` by importance sampling, which decodes ``10 * S`` draws per cell
        (minutes); see :meth:`MixSCVI.get_component_responsibilities`.
    model_kwargs, train_kwargs
        Extra arguments for :class:`MixSCVI` and :meth:`MixSCVI.train`.

    Returns
    -------
    The trained model. Written into ``adata`` (or its copy):

    * ``.obsm[key_added]``: mixture-mean latent, ``(n_cells, n_latent)``;
    * ``.obsm[f"{key_added}_responsibilities"]``: component responsibilities, ``(n_cells, S)``;
    * ``.obs[f"{key_added}_component"]``: the dominant component (categorical);
    * ``.obs[f"{key_added}_uncertainty"]``: trace of the posterior covariance;
    * ``.obs[f"{key_added}_jsd"]``: divergence between the components;
    * ``.uns[key_added]``: parameters and final training metrics.
    """
    if copy:
        adata = adata.copy()
    MixSCVI.setup_anndata(
        adata,
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
    )
    model = MixSCVI(
        adata,
        n_components=n_components,
        shared_encoder=shared_encoder,
        n_sampled_components=n_sampled_components,
        **(model_kwargs or {}),
    )
    model.train(max_epochs=max_epochs, **(train_kwargs or {}))
    store_outputs(model, adata, key_added, diagnostics)
    return model


def store_outputs(
    model: MixSCVI,
    adata: AnnData,
    key_added: str = "X_mixscvi",
    diagnostics: Literal["means", "importance"] = "means",
) -> None:
    """Write a trained model's latent and mixture diagnostics into ``adata``.

    See :func:`mixscvi` for the keys written and ``diagnostics``.
    """
    adata.obsm[key_added] = model.get_latent_representation(adata)
    responsibilities = model.get_component_responsibilities(adata, method=diagnostics)
    adata.obsm[f"{key_added}_responsibilities"] = responsibilities
    adata.obs[f"{key_added}_component"] = pd.Categorical(
        responsibilities.argmax(1).astype(str),
        categories=[str(k) for k in range(model.n_components)],
    )
    adata.obs[f"{key_added}_uncertainty"] = model.get_posterior_uncertainty(adata)
    adata.obs[f"{key_added}_jsd"] = model.get_component_divergence(adata, method=diagnostics)
    history = {
        name: float(frame.iloc[-1, 0]) for name, frame in model.history.items() if len(frame)
    }
    adata.uns[key_added] = {
        "params": {k: v for k, v in model.init_params_["non_kwargs"].items() if _h5_safe(v)},
        "setup": {
            k: v for k, v in model.adata_manager.registry["setup_args"].items() if _h5_safe(v)
        },
        "final_metrics": history,
        "n_epochs": len(model.history.get("train_loss", [])),
        "diagnostics": diagnostics,
    }


def copy_outputs(source: AnnData, target: AnnData, key_added: str = "X_mixscvi") -> None:
    """Copy what :func:`store_outputs` wrote into ``source`` to ``target`` (same cells).

    For a model trained on a subset of the genes (the variable ones), so that the AnnData with
    every gene carries the embedding and diagnostics too.
    """
    if not source.obs_names.equals(target.obs_names):
        raise ValueError("source and target must hold the same cells in the same order.")
    for key in source.obsm:
        if key.startswith(key_added):
            target.obsm[key] = source.obsm[key]
    for column in source.obs.columns:
        if column.startswith(key_added):
            target.obs[column] = source.obs[column].values  # keeps categorical dtypes
    target.uns[key_added] = source.uns[key_added]


def _h5_safe(value: Any) -> bool:
    return value is not None and isinstance(value, str | int | float | bool | list)
