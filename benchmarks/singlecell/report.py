"""The single-cell benchmark's report: paired tests against SCVI, tables and figures.

Split from :mod:`benchmarks.singlecell`, which trains and scores the models; this module only
reads their rows.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

from scmixvae.io import atomic_path
from scmixvae.mixture import DEFAULT_OBJECTIVE

from .._models import REFERENCE, ModelSpec
from .._paired import holm, paired_difference

METRICS = ["kmeans_ari", "kmeans_nmi", "silhouette", "svm_accuracy", "leiden_ari", "leiden_nmi"]


def with_paired_differences(rows: list[dict]) -> list[dict]:
    """Rows with ``heldout_ll_minus_scvi``: the held-out likelihood minus SCVI's, same seed.

    All models share the split and the seed, so the paired difference removes the spread that
    comes from the seed and shows whether a gap is larger than the run-to-run noise.
    """
    reference = {r["seed"]: r["heldout_marginal_ll"] for r in rows
                 if r["model"] == REFERENCE and "heldout_marginal_ll" in r}  # fmt: skip
    paired = []
    for row in rows:
        row = dict(row)
        if "heldout_marginal_ll" in row and row["seed"] in reference:
            row["heldout_ll_minus_scvi"] = row["heldout_marginal_ll"] - reference[row["seed"]]
            row["beats_scvi"] = float(row["heldout_ll_minus_scvi"] > 0)
        paired.append(row)
    return paired


def paired_tests(rows: list[dict]) -> pd.DataFrame:
    """Each model's held-out likelihood against SCVI, the SCVI of its own depth, and its own S=1.

    The last isolates the mixture: ``MixSCVI(S=5, shared, A=1, head=64)`` against
    ``MixSCVI(S=1, shared, head=64)``, the same encoder and decoder with one component.

    A difference is taken seed by seed, so the seed's share of the spread cancels; ``p`` is the
    two-sided paired t-test over those seeds (scipy's ``ttest_rel``), a reading of "beyond the
    seed spread" that also counts how many seeds agree. With 3-5 seeds it is a coarse test:
    only large, consistent differences reach p < 0.05.
    """
    scored = [r for r in rows if "heldout_marginal_ll" in r]
    # rows written before the ``code`` field existed can only be paired with SCVI
    specs = {r["model"]: ModelSpec.parse(r["code"]) for r in scored if "code" in r}
    scvi_by_depth = {spec.n_layers: m for m, spec in specs.items() if spec.kind == "scvi"}
    ll = {(r["model"], r["seed"]): r["heldout_marginal_ll"] for r in scored}
    records = []
    for model in dict.fromkeys(r["model"] for r in scored):
        record = {"model": model}
        references = {"scvi": REFERENCE}
        if (spec := specs.get(model)) is not None:
            references["same_depth_scvi"] = scvi_by_depth.get(spec.n_layers)
            if spec.kind == "mixscvi":
                single = replace(spec, n_components=1, n_sampled_components=None,
                                 objective=DEFAULT_OBJECTIVE)  # fmt: skip
                references["own_s1"] = single.name
        for column, reference in references.items():
            if reference is None or reference == model:
                continue
            if column != "scvi" and reference == REFERENCE:
                continue  # the first column already pairs the model with it
            seeds = sorted(s for (m, s) in ll if m == model and (reference, s) in ll)
            if len(seeds) < 2:
                continue
            test = paired_difference([ll[(model, s)] for s in seeds],
                                     [ll[(reference, s)] for s in seeds])  # fmt: skip
            record[f"minus_{column}"] = test["minus"]
            record[f"minus_{column}_std"] = test["minus_std"]
            record[f"above_{column}"] = test["better"]
            record[f"p_{column}"] = test["p"]
            record[f"{column}_reference"] = reference
        if len(record) > 1:
            records.append(record)
    if not records:
        return pd.DataFrame()
    return pd.DataFrame.from_records(records).set_index("model")


def _paired_test_lines(tests: pd.DataFrame) -> list[str]:
    lines = [
        "| model | vs SCVI | seeds above | p | vs SCVI of the same depth | seeds above | p "
        "| vs its own S=1 | seeds above | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, row in tests.iterrows():
        cells = []
        for column in ("scvi", "same_depth_scvi", "own_s1"):
            if pd.isna(row.get(f"minus_{column}", np.nan)):
                cells += ["–", "–", "–"]
                continue
            reference = "" if column == "scvi" else f" vs {row[f'{column}_reference']}"
            cells += [
                f"{row[f'minus_{column}']:+.2f} ± {row[f'minus_{column}_std']:.2f}{reference}",
                row[f"above_{column}"],
                "<0.001" if row[f"p_{column}"] < 0.001 else f"{row[f'p_{column}']:.3f}",
            ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def paired_metric_tests(rows: list[dict], min_seeds: int = 3) -> pd.DataFrame:
    """Each model's clustering metrics (posterior-mean features) against SCVI, seed by seed.

    One row per (model, metric) with at least ``min_seeds`` seeds shared with SCVI: the mean
    difference, the seeds above SCVI, the two-sided paired t-test's p, and that p after Holm's
    correction over every test in the table, since about 60 tests per dataset would give a
    few p < 0.05 by chance alone.
    """
    by = {(r["model"], r["seed"]): r for r in rows if "heldout_marginal_ll" in r}
    records = []
    for model in dict.fromkeys(m for m, _ in by):
        if model == REFERENCE:
            continue
        seeds = sorted(s for m, s in by if m == model and (REFERENCE, s) in by)
        if len(seeds) < min_seeds:
            continue
        for metric in METRICS:
            key = f"{metric}_mean"
            own = np.array([by[(model, s)][key] for s in seeds], dtype=float)
            other = np.array([by[(REFERENCE, s)][key] for s in seeds], dtype=float)
            if not (np.isfinite(own).all() and np.isfinite(other).all()):
                continue
            test = paired_difference(own, other)
            records.append({"model": model, "metric": metric, "n_seeds": len(seeds),
                            "minus_scvi": test["minus"], "above_scvi": test["better"],
                            "p": test["p"]})  # fmt: skip
    if not records:
        return pd.DataFrame()
    tests = pd.DataFrame.from_records(records)
    tests["p"] = tests["p"].fillna(1.0)  # identical values: no difference to test
    tests["p_holm"] = holm(tests["p"].to_numpy())
    return tests


def _paired_metric_lines(tests: pd.DataFrame) -> list[str]:
    lines = [
        "| model | seeds | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for model, own in tests.groupby("model", sort=False):
        cells = {
            r.metric: f"{r.minus_scvi:+.3f} ({r.above_scvi}, p {r.p:.3f}, Holm {r.p_holm:.2f})"
            for r in own.itertuples()
        }
        lines.append(f"| {model} | {own['n_seeds'].iloc[0]} | "
                     + " | ".join(cells.get(m, "–") for m in METRICS) + " |")  # fmt: skip
    raw, corrected = int((tests["p"] < 0.05).sum()), int((tests["p_holm"] < 0.05).sum())
    better = tests[(tests["p_holm"] < 0.05) & (tests["minus_scvi"] > 0)]
    lines += ["", f"{len(tests)} tests: {raw} with p < 0.05 before the correction, {corrected} "
              f"after it ({len(better)} of them in the model's favour)."]  # fmt: skip
    return lines


def summarise(rows: list[dict]) -> pd.DataFrame:
    """Mean and standard deviation over seeds per model."""
    frame = pd.DataFrame(rows)
    text = ("model", "code", "objective", "kind", "seed", "shared_encoder", "n_sampled_components",
            "ll_curve")  # fmt: skip
    numeric = [c for c in frame.columns if c not in text]
    grouped = frame.groupby("model", sort=False)[numeric]
    spread = grouped.std(ddof=0).where(grouped.count() > 1)  # no spread from a single seed
    summary = grouped.mean().join(spread, rsuffix="_std")
    summary["n_seeds"] = frame.groupby("model", sort=False)["seed"].nunique()
    return summary


def _table(summary: pd.DataFrame, columns: list[str]) -> list[str]:
    header = "| model | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for model, row in summary.iterrows():
        cells = [
            f"{int(row[c])}" if c == "n_seeds" else
            "–" if np.isnan(row[c]) else
            f"{row[c]:.3f} (1 seed)" if np.isnan(row[c + "_std"]) else
            f"{row[c]:.3f} ± {row[c + '_std']:.3f}"
            for c in columns
        ]  # fmt: skip
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def model_family(name: str) -> str:
    """The configuration without its ``S``: ``MixSCVI(S=50, shared, A=1)`` -> ``shared, A=1``;
    SCVI rows (``SCVI``, ``SCVI(n_layers=2)``) keep their name."""
    if name.startswith("SCVI"):
        return name
    rest = re.sub(r"S=\d+(, )?", "", name.removeprefix("MixSCVI(").removesuffix(")"))
    return rest or "MISELBO"


def plot_metrics(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Each metric against ``S``, one line per configuration; SCVI as a dashed line."""
    panels = [m for m in ["kmeans_ari_mean", "kmeans_nmi_mean", "silhouette_mean",
                          "svm_accuracy_mean", "leiden_ari_mean", "heldout_marginal_ll"]
              if m in summary.columns]  # fmt: skip
    families = pd.Series([model_family(n) for n in summary.index], index=summary.index)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
    for ax, metric in zip(np.atleast_1d(axes), panels, strict=True):
        for family in dict.fromkeys(families):
            rows = summary[families == family].sort_values("S")
            if family.startswith("SCVI"):
                ax.axhline(rows[metric].iloc[0], ls="--" if family == REFERENCE else ":", c="grey",
                           label=family)  # fmt: skip
                continue
            ax.errorbar(rows["S"], rows[metric], yerr=rows[metric + "_std"], fmt="o-",
                        label=f"MixSCVI, {family}", capsize=2)  # fmt: skip
        if summary["S"].max() > 10:
            ax.set_xscale("log")
        ax.set_xlabel("components S")
        ax.set_title(metric.replace("_mean", "").replace("_", " "), fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Held-out log p(x) against training time, one line per (model, seed)."""
    curves = [r for r in rows if r.get("ll_curve")]
    if not curves:
        return
    models = list(dict.fromkeys(r["model"] for r in curves))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for row in curves:
        points = row["ll_curve"]
        ax.plot(
            [p["train_seconds"] for p in points],
            [p["heldout_marginal_ll"] for p in points],
            color=colors[row["model"]],
            lw=1,
            alpha=0.8,
            label=row["model"]
            if row["seed"] == min(r["seed"] for r in curves if r["model"] == row["model"])
            else None,
        )
    # the curve starts far below its end: show the part where the models differ
    finals = [r["ll_curve"][-1]["heldout_marginal_ll"] for r in curves]
    low = min(
        p["heldout_marginal_ll"] for r in curves for p in r["ll_curve"][len(r["ll_curve"]) // 4 :]
    )
    ax.set_ylim(low, max(finals) + 0.1 * (max(finals) - low + 1))
    ax.set(xlabel="training wall-clock time (s, this CPU)", ylabel="held-out log p(x) per cell")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def plot_umaps(models: dict[str, object], adata, path: Path) -> None:
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8))
    for ax, (name, model) in zip(np.atleast_1d(axes), models.items(), strict=True):
        view = adata.copy()
        view.obsm["X_latent"] = model.get_latent_representation(model.adata)
        sc.pp.neighbors(view, use_rep="X_latent", random_state=0)
        sc.tl.umap(view, random_state=0)
        sc.pl.umap(view, color="cell_type", ax=ax, show=False, title=name, legend_loc=None)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


# Settings that change what a finished run measured; rows are only reused when these agree.
