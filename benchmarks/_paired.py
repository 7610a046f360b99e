"""Paired comparisons by seed, shared by every benchmark report."""

from __future__ import annotations

import numpy as np
from scipy.stats import ttest_rel


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error)."""
    pvalues = np.asarray(pvalues, dtype=float)
    order = np.argsort(pvalues)
    scaled = (len(pvalues) - np.arange(len(pvalues))) * pvalues[order]
    adjusted = np.empty_like(pvalues)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def paired_difference(own, other, lower_better: bool = False) -> dict:
    """``own`` against ``other``, seed by seed (same order): the mean and spread of the
    differences, the seeds on which ``own`` is better, and the two-sided paired t-test's p
    (NaN where every difference is the same, so there is no spread to test against)."""
    own, other = np.asarray(own, dtype=float), np.asarray(other, dtype=float)
    diff = own - other
    better = own < other if lower_better else own > other
    return {
        "n_seeds": len(own),
        "minus": float(diff.mean()),
        "minus_std": float(diff.std()),
        "better": f"{int(better.sum())}/{len(own)}",
        "p": float(ttest_rel(own, other).pvalue) if np.ptp(diff) > 0 else float("nan"),
    }
