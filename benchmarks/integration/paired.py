"""Integration scores paired by seed: each trained model against SCVI and against SysVI."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._paired import holm, paired_difference

SUMMARY_METRICS = ("Bio conservation", "Batch correction", "Total")
REFERENCES = ("SCVI", "SysVI(prior=vamp)")


def difference_cell(result: dict, p_holm: float) -> str:
    """One paired difference as a table cell: mean ± std (better seeds, p, Holm)."""
    return (
        f"{result['minus']:+.3f} ± {result['minus_std']:.3f} ({result['better']}, "
        f"p {result['p']:.2g}, Holm {p_holm:.2g})"
    )


def per_seed(scores: pd.DataFrame, method: str) -> pd.DataFrame:
    """``method``'s rows of the score table, indexed by seed."""
    rows = [k for k in scores.index if k.split(" seed ")[0] == method and " seed " in k]
    frame = scores.loc[rows]
    frame.index = [int(k.rsplit(" seed ", 1)[1]) for k in rows]
    return frame


def paired_metrics(own: pd.DataFrame, base: pd.DataFrame, metrics) -> list[tuple[str, dict]]:
    """``own`` minus ``base`` (score tables indexed by seed) on each metric, over the seeds
    both have; empty under two seeds, where there is nothing to pair."""
    seeds = sorted(set(own.index) & set(base.index))
    if len(seeds) < 2:
        return []
    return [(m, paired_difference(own.loc[seeds, m], base.loc[seeds, m])) for m in metrics]


def paired_lines(scores: pd.DataFrame, metrics=SUMMARY_METRICS, references=REFERENCES) -> list:
    """A markdown table of every trained model minus each reference, on the seeds both have.

    Cells: mean ± std of the differences, seeds where the model scores higher, the paired
    t-test's p and Holm's adjustment over every test in the table. Empty without a reference.
    Only the ``metrics`` the table has are paired (a batch-only task such as Kang has no
    bio-conservation or total).
    """
    metrics = [m for m in metrics if m in scores.columns]
    methods = list(dict.fromkeys(k.split(" seed ")[0] for k in scores.index if " seed " in k))
    tests = []
    present = [r for r in references if r in methods]
    for reference in present:
        base = per_seed(scores, reference)
        # a reference is compared with the references before it once, not twice
        for method in (m for m in methods if m not in present[: present.index(reference) + 1]):
            for metric, result in paired_metrics(per_seed(scores, method), base, metrics):
                tests.append((method, reference, metric, result))
    if not tests:
        return []
    adjusted = holm(np.array([t[3]["p"] for t in tests]))
    lines = [
        "",
        "Paired by seed (model minus reference: mean ± std of the differences, seeds where the "
        f"model scores higher, paired t-test p, Holm over the table's {len(tests)} tests):",
        "",
        "| model | reference | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    cells: dict[tuple[str, str], list[str]] = {}
    for (method, reference, _, r), p_holm in zip(tests, adjusted, strict=True):
        cells.setdefault((method, reference), []).append(difference_cell(r, p_holm))
    for (method, reference), row in cells.items():
        lines.append(f"| {method} | {reference} | " + " | ".join(row) + " |")
    return lines
