r"""Label uncertainty: the mixture predictive, its decomposition, and calibration metrics.

Everything here is numpy on probability arrays, so it scores any classifier (MixSCANVI, SCANVI,
a kNN vote, CellTypist) the same way.

With ``p_s(y | x)`` the label probabilities of component ``s`` (averaged over its draws), the
mixture predictive is :math:`\bar p(y \mid x) = \frac1S \sum_s p_s(y \mid x)` and its entropy
splits into two non-negative parts,

.. math::
    \underbrace{H[\bar p]}_{\text{total}} =
    \underbrace{\tfrac1S \textstyle\sum_s H[p_s]}_{\text{expected}} +
    \underbrace{H[\bar p] - \tfrac1S \textstyle\sum_s H[p_s]}_{\text{disagreement}},

the disagreement being the mutual information between the label and the component (the BALD
term): 0 when the components agree, at most :math:`\log S`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

N_CALIBRATION_BINS = 15
UNCERTAINTY_COLUMNS = ("confidence", "entropy", "disagreement", "expected_entropy")


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (``0 log 0 = 0``)."""
    probs = np.asarray(probs, dtype=np.float64)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=axis)


def predictive_uncertainty(component_probs: np.ndarray) -> pd.DataFrame:
    """Per-observation uncertainty of a mixture predictive.

    Parameters
    ----------
    component_probs
        ``(S, n, C)``: each component's label probabilities.

    Returns
    -------
    A frame with ``confidence`` (:math:`\\max_y \\bar p`), ``entropy`` (total),
    ``disagreement`` (mutual information between label and component) and
    ``expected_entropy`` (mean entropy of the components), one row per observation.
    """
    component_probs = np.asarray(component_probs, dtype=np.float64)
    if component_probs.ndim != 3:
        raise ValueError(
            f"component_probs must be (S, n_obs, n_labels), got shape {component_probs.shape}."
        )
    mean = component_probs.mean(0)
    total = entropy(mean)
    expected = entropy(component_probs).mean(0)
    return pd.DataFrame(
        {
            "confidence": mean.max(-1),
            "entropy": total,
            "disagreement": np.clip(total - expected, 0.0, None),
            "expected_entropy": expected,
        }
    )


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(
            f"probs must be (n_obs, n_labels) and labels (n_obs,), got {probs.shape} and "
            f"{labels.shape}."
        )
    if labels.dtype.kind not in "iu" or (labels < 0).any() or (labels >= probs.shape[1]).any():
        raise ValueError("labels must be integer codes in [0, n_labels).")
    return probs, labels


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_CALIBRATION_BINS
) -> float:
    """Expected calibration error: ``|accuracy - confidence|`` over equal-width confidence bins,
    weighted by the share of observations in each bin (Guo et al., 2017)."""
    probs, labels = _check_probs(probs, labels)
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def reliability_table(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_CALIBRATION_BINS
) -> pd.DataFrame:
    """Per confidence bin: its edges, mean confidence, accuracy and number of observations."""
    probs, labels = _check_probs(probs, labels)
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = bins == b
        rows.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "confidence": confidence[inside].mean() if inside.any() else np.nan,
                "accuracy": correct[inside].mean() if inside.any() else np.nan,
                "n": int(inside.sum()),
            }
        )
    return pd.DataFrame(rows)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over observations of the squared distance between ``probs`` and the one-hot label."""
    probs, labels = _check_probs(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(1).mean())


def true_label_nll(probs: np.ndarray, labels: np.ndarray, floor: float = 1e-12) -> float:
    """Mean negative log-probability of the true label (probabilities floored at ``floor``)."""
    probs, labels = _check_probs(probs, labels)
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], floor)).mean())


def detection_auroc(uncertainty: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``uncertainty`` for telling ``positive`` observations (errors, unseen types)
    from the rest; 0.5 is chance. NaN when either class is empty."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(uncertainty, dtype=np.float64)))


def selective_accuracy(uncertainty: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy on the ``coverage`` share of observations with the lowest uncertainty."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}.")
    correct = np.asarray(correct, dtype=bool)
    n_kept = max(1, round(coverage * len(correct)))
    order = np.argsort(np.asarray(uncertainty), kind="stable")
    return float(correct[order[:n_kept]].mean())


def unknown_threshold(
    uncertainty: np.ndarray, correct: np.ndarray, error_rate: float = 0.05
) -> float:
    """The largest uncertainty threshold at which cells kept (uncertainty at most it) have an
    error rate of at most ``error_rate``, chosen on held-out labelled cells.

    Cells above the threshold are called *unknown*. If even the most certain cells err more
    often than ``error_rate``, the threshold is below every uncertainty (everything is unknown).
    """
    if not 0 <= error_rate < 1:
        raise ValueError(f"error_rate must be in [0, 1), got {error_rate}.")
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if uncertainty.shape != correct.shape or uncertainty.size == 0:
        raise ValueError("uncertainty and correct must be non-empty and of the same length.")
    order = np.argsort(uncertainty, kind="stable")
    sorted_u = uncertainty[order]
    errors = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    # a threshold can only sit where the uncertainty changes: the last cell of each tie group
    last_of_tie = np.r_[sorted_u[1:] != sorted_u[:-1], True]
    admissible = np.flatnonzero((errors <= error_rate) & last_of_tie)
    if admissible.size == 0:
        return float(np.nextafter(sorted_u[0], -np.inf))
    return float(sorted_u[admissible[-1]])


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    uncertainty: np.ndarray,
    coverage: float = 0.9,
) -> dict[str, float]:
    """Accuracy, macro-F1, ECE, Brier, NLL, error-detection AUROC and selective accuracy."""
    from sklearn.metrics import f1_score

    probs, labels = _check_probs(probs, labels)
    predicted = probs.argmax(1)
    correct = predicted == labels
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=np.unique(labels))),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
        "nll": true_label_nll(probs, labels),
        "error_auroc": detection_auroc(uncertainty, ~correct),
        f"accuracy_at_{round(coverage * 100)}": selective_accuracy(uncertainty, correct, coverage),
    }
