"""Label transfer by a weighted kNN vote on a latent space (the scArches / HLCA recipe).

Each query cell takes its ``k`` nearest reference cells; their distances ``d`` become weights
through a Gaussian kernel scaled per query cell, ``exp(-d / (2 / std(d))^2)``, normalised to sum
to one; a label's probability is the total weight of the neighbours carrying it, the
prediction is the heaviest label, and the uncertainty is one minus its weight (Sikkema et al.,
2023, the Human Lung Cell Atlas; ``scarches.utils.knn``). Written here because scArches does
not install beside scvi-tools 1.4.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def knn_label_probabilities(
    reference_latent: np.ndarray,
    reference_labels: np.ndarray,
    query_latent: np.ndarray,
    n_labels: int,
    k: int = 50,
    exclude_self: bool = False,
) -> np.ndarray:
    """Kernel-weighted label votes of the ``k`` nearest reference cells, ``(n_query, n_labels)``.

    Parameters
    ----------
    reference_latent, query_latent
        ``(n_cells, n_latent)`` positions.
    reference_labels
        Integer codes in ``[0, n_labels)`` of the reference cells.
    n_labels
        Number of label codes.
    k
        Neighbours per query cell (at most the number of reference cells).
    exclude_self
        The query is the reference: leave each cell out of its own vote.
    """
    reference_latent = np.asarray(reference_latent, dtype=np.float64)
    query_latent = np.asarray(query_latent, dtype=np.float64)
    reference_labels = np.asarray(reference_labels)
    if reference_latent.shape[0] != reference_labels.shape[0]:
        raise ValueError("reference_latent and reference_labels must have the same cells.")
    if reference_latent.shape[1] != query_latent.shape[1]:
        raise ValueError(
            f"reference and query latents differ in width: {reference_latent.shape[1]} and "
            f"{query_latent.shape[1]}."
        )
    k = min(k, reference_latent.shape[0] - int(exclude_self))
    if k < 1:
        raise ValueError("the reference needs at least one cell (two with exclude_self).")
    index = NearestNeighbors(n_neighbors=k + int(exclude_self)).fit(reference_latent)
    distances, neighbours = index.kneighbors(query_latent)
    if exclude_self:
        distances, neighbours = distances[:, 1:], neighbours[:, 1:]
    spread = distances.std(axis=1, keepdims=True)
    # identical distances (std 0) give equal weights, as the limit of the kernel does
    scale = np.where(spread > 0, (2.0 / np.where(spread > 0, spread, 1.0)) ** 2, np.inf)
    weights = np.exp(-distances / scale)
    weights /= weights.sum(axis=1, keepdims=True)
    probs = np.zeros((query_latent.shape[0], n_labels))
    np.add.at(probs, (np.arange(len(probs))[:, None], reference_labels[neighbours]), weights)
    return probs
