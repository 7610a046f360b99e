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
    prior: str = "standard_normal",
    n_prior_components: int | None = None,
    flow_steps: int = 0,
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
    prior, n_prior_components, flow_steps
        The latent prior (``"standard_normal"``, ``"vamp"``, ``"mog"``), its ``K`` and the
        latent flow's steps; see :class:`MixSCVI` (``pseudoinputs_data_indices`` goes in
        ``model_kwargs``).
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
        prior=prior,
        n_prior_components=n_prior_components,
        flow_steps=flow_steps,
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


def label_transfer(
    reference_model,
    query: AnnData,
    key_added: str = "label_transfer",
    error_rate: float = 0.05,
    max_epochs: int = 100,
    n_neighbors: int = 50,
    use_posterior_mean: bool = True,
    n_samples: int = 10,
    train_kwargs: dict[str, Any] | None = None,
    unlabeled_category: str | None = None,
):
    """Label ``query`` from a trained reference, with an uncertainty and an "unknown" flag.

    The scArches workflow in one call: the query is mapped onto the reference
    (``load_query_data``, then ``max_epochs`` epochs on the query with weight decay 0, as in
    scvi-tools' tutorial), then labelled:

    * with a :class:`~scmixvae.MixSCANVI` reference, by the mixture predictive (the classifier
      averaged over the components);
    * with a :class:`~scmixvae.MixSCVI` reference (set up with ``labels_key``), by a
      kernel-weighted vote of the ``n_neighbors`` nearest reference cells on the latent (the
      scArches / Human Lung Cell Atlas recipe).

    Parameters
    ----------
    reference_model
        A trained MixSCANVI or MixSCVI, holding its reference AnnData and trained with a
        validation split (its labelled validation cells choose the threshold).
    query
        Cells x the reference's genes (same names, same order), raw counts where the reference
        reads them, and the reference's batch column (a new category for a new batch).
    key_added
        Prefix of every key written.
    error_rate
        The "unknown" threshold is the largest uncertainty at which the reference's held-out
        validation cells are wrong at most this often (default 5 %).
    max_epochs
        Epochs of training on the query.
    n_neighbors
        Neighbours of the kNN vote (MixSCVI route).
    use_posterior_mean, n_samples
        How each component votes (MixSCANVI route): at its mean, or averaged over
        ``n_samples`` draws; see :meth:`MixSCANVI.predict`.
    train_kwargs
        Extra arguments of the query model's ``train``.
    unlabeled_category
        MixSCVI route: reference cells with this label take no part in the vote (a MixSCANVI
        reference knows its own).

    Returns
    -------
    The query model. Written into ``query`` (only after everything succeeded):

    * ``.obs[f"{key_added}_label"]``: predicted label (categorical);
    * ``.obs[f"{key_added}_confidence"]``: its probability, and ``_uncertainty`` = 1 − it;
    * ``.obs[f"{key_added}_entropy"]`` and ``_disagreement`` (MixSCANVI: the predictive
      entropy and the components' share of it, :func:`scmixvae.uncertainty.
      predictive_uncertainty`), or ``_posterior_uncertainty`` (MixSCVI: the trace of the
      mixture's covariance);
    * ``.obs[f"{key_added}_unknown"]``: ``True`` where the uncertainty is above the threshold;
    * ``.obsm[f"X_{key_added}"]``: the query's latent; ``.obsm[f"{key_added}_probabilities"]``;
    * ``.uns[key_added]``: the route, the label names, the threshold, the calibration cells'
      accuracy and reliability table (for :func:`scmixvae.pl.label_transfer`).
    """
    from .singlecell.label_transfer import label_transfer as run

    return run(
        reference_model, query, key_added=key_added, error_rate=error_rate,
        max_epochs=max_epochs, n_neighbors=n_neighbors, use_posterior_mean=use_posterior_mean,
        n_samples=n_samples, train_kwargs=train_kwargs, unlabeled_category=unlabeled_category,
    )  # fmt: skip
