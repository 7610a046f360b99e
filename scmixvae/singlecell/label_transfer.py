"""The label-transfer workflow in one call: map a query onto a reference, predict, flag unknowns.

Used by :func:`scmixvae.tl.label_transfer`. Two routes:

* a :class:`~scmixvae.MixSCANVI` reference: scArches maps the query (``load_query_data``, then
  training on it), and its mixture predictive labels the query; the uncertainty is one minus the
  predicted label's probability, beside the entropy and the components' disagreement;
* a :class:`~scmixvae.MixSCVI` reference: the same mapping, then a kernel-weighted kNN vote of
  the reference's labels on the latent (:mod:`scmixvae.knn`, the scArches / HLCA recipe), with
  the mixture's posterior uncertainty beside the vote's.

The "unknown" threshold is chosen on the reference's validation cells (labelled, held out of
training) so that cells at or below it err at most ``error_rate`` of the time there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from scmixvae.knn import knn_label_probabilities
from scmixvae.uncertainty import predictive_uncertainty, reliability_table, unknown_threshold

from .model import MixSCVI
from .safety import check_same_genes
from .scanvi_model import MixSCANVI


def _labelled_validation(reference, unlabeled: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and label names of the reference's labelled validation cells."""
    setup = reference.adata_manager.registry["setup_args"]
    labels = reference.adata.obs[setup["labels_key"]].astype(str).to_numpy()
    indices = np.asarray(reference.validation_indices_ if reference.validation_indices_ is not None
                         else [], dtype=int)  # fmt: skip
    indices = indices[labels[indices] != str(unlabeled)] if len(indices) else indices
    if len(indices) < 20:
        raise ValueError(
            f"the reference has {len(indices)} labelled validation cells; the unknown threshold "
            "needs at least 20: train it with a validation split (train_size < 1)."
        )
    return indices, labels[indices]


def _check_reference(reference) -> None:
    if not isinstance(reference, MixSCANVI | MixSCVI):
        raise TypeError(
            f"reference_model must be a trained scmixvae.MixSCANVI or MixSCVI, got "
            f"{type(reference).__name__}."
        )
    reference._check_if_trained(warn=False)
    if reference.adata is None:
        raise ValueError("the reference model holds no AnnData: load it with its reference data.")
    if isinstance(reference, MixSCVI) and not reference.registry["setup_args"].get("labels_key"):
        raise ValueError(
            "the MixSCVI reference was set up without labels_key: the kNN route needs the "
            "reference's labels (MixSCVI.setup_anndata(..., labels_key=...))."
        )


def _query_copy(reference, query: AnnData) -> AnnData:
    """The query as the reference model reads it: same genes, the labels column unlabeled."""
    check_same_genes(reference.adata.var_names, query.var_names, "the reference model's genes")
    setup = reference.adata_manager.registry["setup_args"]
    mapped = query.copy()
    labels_key = setup["labels_key"]
    unlabeled = setup.get("unlabeled_category") or "Unknown"
    if labels_key not in mapped.obs:
        mapped.obs[labels_key] = pd.Categorical([unlabeled] * mapped.n_obs)
    batch_key = setup.get("batch_key")
    if batch_key is not None and batch_key not in mapped.obs:
        raise KeyError(
            f"the query has no batch column {batch_key!r}, which the reference was set up with; "
            "add it (a new category for a new batch)."
        )
    return mapped


def _knn_route(reference: MixSCVI, query_model, mapped: AnnData, k: int, unlabeled):
    setup = reference.adata_manager.registry["setup_args"]
    labels = reference.adata.obs[setup["labels_key"]].astype(str).to_numpy()
    labelled = labels != str(unlabeled)
    names = np.array(sorted(set(labels[labelled])))
    codes = np.searchsorted(names, labels)  # names is sorted; unlabeled cells never vote
    val, _ = _labelled_validation(reference, unlabeled)
    voters = np.setdiff1d(np.flatnonzero(labelled), val)
    latent = reference.get_latent_representation()
    held = knn_label_probabilities(latent[voters], codes[voters], latent[val], len(names), k=k)
    voters = np.flatnonzero(labelled)
    query = knn_label_probabilities(
        latent[voters], codes[voters], query_model.get_latent_representation(mapped),
        len(names), k=k,
    )  # fmt: skip
    extra = {"posterior_uncertainty": query_model.get_posterior_uncertainty(mapped)}
    return names, held, codes[val], query, extra


def _classifier_route(reference: MixSCANVI, query_model: MixSCANVI, mapped, mean, n_samples):
    val, val_labels = _labelled_validation(reference, reference.unlabeled_category_)
    options = {"use_posterior_mean": mean, "n_samples": n_samples}
    names = np.asarray(reference._label_mapping[: reference.n_labels]).astype(str)
    held = reference.get_component_label_probabilities(indices=val, **options).mean(0)
    components = query_model.get_component_label_probabilities(mapped, **options)
    frame = predictive_uncertainty(components)
    extra = {c: frame[c].to_numpy() for c in ("entropy", "disagreement")}
    code = {name: i for i, name in enumerate(names)}
    held_codes = np.array([code[label] for label in val_labels])
    return names, held, held_codes, components.mean(0), extra


def label_transfer(
    reference_model: MixSCANVI | MixSCVI,
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
    """Map ``query`` onto ``reference_model``, label it, and write the results into ``query``.

    See :func:`scmixvae.tl.label_transfer` for the parameters and what is written.
    """
    _check_reference(reference_model)
    if not 0 <= error_rate < 1:
        raise ValueError(f"error_rate must be in [0, 1), got {error_rate}.")
    mapped = _query_copy(reference_model, query)
    cls = type(reference_model)
    query_model = cls.load_query_data(mapped, reference_model)
    options = {"plan_kwargs": {"weight_decay": 0.0}, **(train_kwargs or {})}
    query_model.train(max_epochs=max_epochs, **options)
    if isinstance(reference_model, MixSCANVI):
        names, held, held_codes, probs, extra = _classifier_route(
            reference_model, query_model, mapped, use_posterior_mean, n_samples
        )
    else:
        names, held, held_codes, probs, extra = _knn_route(
            reference_model, query_model, mapped, n_neighbors, unlabeled_category
        )
    threshold = unknown_threshold(1 - held.max(1), held.argmax(1) == held_codes, error_rate)
    uncertainty = 1 - probs.max(1)
    latent = query_model.get_latent_representation(mapped)
    # everything computed: only now is the user's AnnData written
    query.obs[f"{key_added}_label"] = pd.Categorical(names[probs.argmax(1)], categories=names)
    query.obs[f"{key_added}_confidence"] = probs.max(1)
    query.obs[f"{key_added}_uncertainty"] = uncertainty
    for name, values in extra.items():
        query.obs[f"{key_added}_{name}"] = values
    query.obs[f"{key_added}_unknown"] = uncertainty > threshold
    query.obsm[f"X_{key_added}"] = latent
    query.obsm[f"{key_added}_probabilities"] = probs
    reliability = reliability_table(held, held_codes)
    query.uns[key_added] = {
        "route": "classifier" if isinstance(reference_model, MixSCANVI) else "knn",
        "labels": list(names),
        "threshold": float(threshold),
        "error_rate": float(error_rate),
        "n_calibration_cells": len(held_codes),
        "calibration_accuracy": float((held.argmax(1) == held_codes).mean()),
        "reliability": {c: reliability[c].to_numpy() for c in reliability.columns},
    }
    return query_model
