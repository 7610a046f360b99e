"""MixSCVI against scvi-tools SCVI and against an independently trained ensemble, on real data.

Protocols (see issue 7 and the method's paper):

1. clustering: a fixed train / validation / test split (by ``--split-seed``); MixSCVI with
   S = 1..5 (n_latent 10, n_hidden 128, ZINB, Adam lr 1e-3, batch 512, early stopping on the
   validation cells); on the test cells KMeans with as many clusters as labelled types -> ARI,
   NMI; silhouette of the labels; a linear SVM (C = 0.025) trained on half of the test cells and
   scored on the other half; for two feature sets: the mixture-mean latent, and the paper's
   concatenation of every component's means and variances. Repeated over training seeds.
2. leiden on the test cells' latent (as scanpy users cluster), ARI / NMI against the labels.
3. held-out marginal log-likelihood per test cell (importance sampling, mixture proposal, tight
   estimator) for MixSCVI S = 1..5, the ensemble objective at the largest S, and SCVI.
4. cost: seconds per epoch of each model relative to SCVI, from the same runs.

Writes ``benchmarks/results/singlecell_<dataset>.{json,md}`` and ``..._metrics.png`` /
``..._umap.png``.

Usage::

    python -m benchmarks.singlecell --datasets mouse_bladder worm_neuron sorted_pbmc \
        --components 1 2 3 4 5 --seeds 0 1 2 --max-epochs 200
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import lightning.pytorch as pl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.svm import SVC

from scmixvae.datasets import load_counts
from scmixvae.io import atomic_path
from scmixvae.mixture import DEFAULT_OBJECTIVE

from ._models import REFERENCE, ModelSpec
from ._report import command_line, write_report

RESULTS = Path(__file__).parent / "results"
METRICS = ["kmeans_ari", "kmeans_nmi", "silhouette", "svm_accuracy", "leiden_ari", "leiden_nmi"]


def prepare(dataset: str, n_genes: int, split_seed: int, max_cells: int | None = None):
    """Counts restricted to the most variable genes, and a fixed 70/10/20 split."""
    adata = load_counts(dataset)
    if max_cells is not None and adata.n_obs > max_cells:
        keep = np.random.default_rng(split_seed).choice(adata.n_obs, max_cells, replace=False)
        adata = adata[np.sort(keep)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=min(n_genes, adata.n_vars), flavor="seurat_v3", layer="counts",
        subset=True,
    )  # fmt: skip
    order = np.random.default_rng(split_seed).permutation(adata.n_obs)
    n_train, n_val = int(0.7 * adata.n_obs), int(0.1 * adata.n_obs)
    split = [np.sort(order[:n_train]), np.sort(order[n_train : n_train + n_val])]
    split.append(np.sort(order[n_train + n_val :]))
    return adata, split


def features(model, spec: ModelSpec, adata, test: np.ndarray) -> dict[str, np.ndarray]:
    """Test-cell features: the posterior mean, and every component's means and variances."""
    if spec.kind == "scvi":
        mean, var = model.get_latent_representation(adata, indices=test, return_dist=True)
        return {"mean": mean, "concat": np.hstack([mean, var])}
    mean = model.get_latent_representation(adata, indices=test)
    loc, var = model.get_latent_representation(
        adata, indices=test, component="all", return_dist=True
    )
    n_test = len(test)
    return {"mean": mean, "concat": np.hstack([loc.reshape(n_test, -1), var.reshape(n_test, -1)])}


def cluster_metrics(x: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """KMeans ARI / NMI, silhouette, linear-SVM accuracy, leiden ARI / NMI."""
    n_types = len(np.unique(labels))
    predicted = KMeans(n_clusters=n_types, n_init=10, random_state=seed).fit_predict(x)
    half = np.random.default_rng(seed).permutation(len(labels))
    fit, score = half[: len(half) // 2], half[len(half) // 2 :]
    svm = SVC(kernel="linear", C=0.025).fit(x[fit], labels[fit])
    graph = sc.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    graph.obsm["X"] = x
    sc.pp.neighbors(graph, use_rep="X", random_state=seed)
    sc.tl.leiden(graph, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    return {
        "kmeans_ari": adjusted_rand_score(labels, predicted),
        "kmeans_nmi": normalized_mutual_info_score(labels, predicted),
        "silhouette": float(silhouette_score(x, labels)),
        "svm_accuracy": float(svm.score(x[score], labels[score])),
        "leiden_ari": adjusted_rand_score(labels, graph.obs["leiden"]),
        "leiden_nmi": normalized_mutual_info_score(labels, graph.obs["leiden"]),
    }


class HeldoutCurve(pl.Callback):
    """Held-out log p(x) every ``every`` epochs against the training time spent so far.

    The evaluation's own time is not counted; it runs in eval mode (scvi-tools' SCVI does not
    switch to it by itself: batch normalisation would learn the test cells' statistics) and the
    random-number generator is restored after it, so the training trajectory is the one of a
    run without the curve (tested).
    """

    def __init__(self, model, adata, indices: np.ndarray, every: int, n_mc_samples: int):
        super().__init__()
        self.model, self.adata, self.indices = model, adata, indices
        self.every, self.n_mc_samples = every, n_mc_samples
        self.points: list[dict] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch != 1 and epoch % self.every:
            return
        start = time.perf_counter()
        self.train_seconds += start - self._mark
        rng = torch.get_rng_state()
        was_training = self.model.module.training
        self.model.module.eval()
        per_cell = self.model.get_marginal_ll(
            self.adata, indices=self.indices, n_mc_samples=self.n_mc_samples, return_mean=False
        )
        self.model.module.train(was_training)
        torch.set_rng_state(rng)
        self.points.append({
            "epoch": epoch,
            "train_seconds": self.train_seconds,
            "heldout_marginal_ll": float(np.mean(np.asarray(per_cell))),
        })  # fmt: skip
        self._mark = time.perf_counter()
        self.eval_seconds += self._mark - start


def run_one(spec: ModelSpec, adata, split, seed: int, args) -> tuple[dict, object]:
    """Train one model with one seed; return its metrics (and the model).

    Early stopping watches the validation cells' bound with ``args.patience`` epochs of
    patience; ``args.patience == 0`` trains exactly ``args.max_epochs`` epochs. Models listed
    in ``args.curve_models`` also record a held-out log p(x) curve (:class:`HeldoutCurve`).
    """
    scvi.settings.seed = seed
    data = adata.copy()
    model = spec.build(data, layer="counts")
    curve = None
    if spec.code in (args.curve_models or []):
        curve = HeldoutCurve(model, data, split[2], args.curve_every, args.curve_samples)
    seconds = fit(model, split, args, callbacks=[curve] if curve else None, **spec.train_kwargs)
    # the curve's evaluations are not training time
    seconds -= curve.eval_seconds if curve else 0.0
    epochs = len(model.history["train_loss"])
    labels = data.obs["cell_type"].to_numpy()[split[2]]
    row = {"model": spec.name, "code": spec.code, "S": spec.n_components,
           "objective": spec.objective, "shared_encoder": spec.shared_encoder,
           "n_sampled_components": spec.n_sampled_components, "kind": spec.kind, "seed": seed,
           "epochs": epochs, "stopped_early": epochs < args.max_epochs,
           "wall_seconds": seconds, "seconds_per_epoch": seconds / max(1, epochs)}  # fmt: skip
    if curve:
        row["ll_curve"] = curve.points
    if spec.kind == "mixscvi":  # diversity of the components on the test cells
        row["jsd"] = float(
            np.mean(model.get_component_divergence(data, indices=split[2],
                                                   n_samples_per_component=10))
        )  # fmt: skip
    for feature_set, x in features(model, spec, data, split[2]).items():
        for metric, value in cluster_metrics(x, labels, seed).items():
            row[f"{metric}_{feature_set}"] = float(value)
    if args.n_mc_samples and (args.ll_seeds is None or seed in args.ll_seeds):
        row["heldout_marginal_ll"] = heldout_ll(model, data, split[2], args.n_mc_samples)
    return row, model


def fit(model, split, args, callbacks: list | None = None, **train_kwargs) -> float:
    """Train ``model`` as every benchmark model is trained; return the seconds it took.

    Adam 1e-3, ``args.kl_warmup_epochs`` of KL warm-up, batches of ``args.batch_size``, the
    fixed ``split`` (train / validation / test indices), and early stopping on the validation
    bound with ``args.patience`` epochs of patience (0: exactly ``args.max_epochs`` epochs).
    """
    start = time.perf_counter()
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": args.kl_warmup_epochs},
        early_stopping=args.patience > 0,
        early_stopping_patience=max(1, args.patience),
        datasplitter_kwargs={"external_indexing": split},
        enable_progress_bar=False,
        **({"callbacks": callbacks} if callbacks else {}),
        **train_kwargs,
    )
    return time.perf_counter() - start


def heldout_ll(model, adata, indices: np.ndarray, n_mc_samples: int) -> float:
    """Mean importance-sampled log p(x) of the ``indices`` cells, in eval mode."""
    model.module.eval()
    per_cell = model.get_marginal_ll(
        adata, indices=indices, n_mc_samples=n_mc_samples, return_mean=False
    )
    return float(np.mean(np.asarray(per_cell)))


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
    from scipy.stats import ttest_rel

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
            own = np.array([ll[(model, s)] for s in seeds])
            other = np.array([ll[(reference, s)] for s in seeds])
            record[f"minus_{column}"] = float(np.mean(own - other))
            record[f"minus_{column}_std"] = float(np.std(own - other))
            record[f"above_{column}"] = f"{int(np.sum(own > other))}/{len(seeds)}"
            record[f"p_{column}"] = float(ttest_rel(own, other).pvalue)
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


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error)."""
    pvalues = np.asarray(pvalues, dtype=float)
    order = np.argsort(pvalues)
    scaled = (len(pvalues) - np.arange(len(pvalues))) * pvalues[order]
    adjusted = np.empty_like(pvalues)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def paired_metric_tests(rows: list[dict], min_seeds: int = 3) -> pd.DataFrame:
    """Each model's clustering metrics (posterior-mean features) against SCVI, seed by seed.

    One row per (model, metric) with at least ``min_seeds`` seeds shared with SCVI: the mean
    difference, the seeds above SCVI, the two-sided paired t-test's p, and that p after Holm's
    correction over every test in the table, since about 60 tests per dataset would give a
    few p < 0.05 by chance alone.
    """
    from scipy.stats import ttest_rel

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
            records.append({"model": model, "metric": metric, "n_seeds": len(seeds),
                            "minus_scvi": float(np.mean(own - other)),
                            "above_scvi": f"{int(np.sum(own > other))}/{len(seeds)}",
                            "p": float(ttest_rel(own, other).pvalue)})  # fmt: skip
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
RUN_SETTINGS = ("split_seed", "n_genes", "max_cells", "max_epochs", "patience", "batch_size",
                "n_mc_samples", "kl_warmup_epochs")  # fmt: skip
# Values of settings that runs made before the setting existed used implicitly.
IMPLICIT_SETTINGS = {"kl_warmup_epochs": 400}  # scvi-tools' default warm-up


def _reusable_rows(stem: Path, args) -> list[dict]:
    """Finished rows of an earlier run with the same settings (its JSON, then its progress log).

    A row whose seed is in ``--ll-seeds`` but that lacks the held-out likelihood is not reused,
    nor a row of a ``--curve-models`` model without its curve.
    """
    rows = []
    if stem.with_suffix(".json").exists():
        payload = json.loads(stem.with_suffix(".json").read_text())
        earlier = payload["settings"]
        if all(earlier.get(k, IMPLICIT_SETTINGS.get(k)) == getattr(args, k) for k in RUN_SETTINGS):
            rows += payload["rows"] + payload.get("unreported_rows", [])
        else:
            print(f"not resuming from {stem}.json: its settings differ", flush=True)
    progress = _progress_path(stem, args)
    if progress.exists():
        rows += [json.loads(line) for line in progress.read_text().splitlines() if line]
    wants_ll = args.ll_seeds if args.ll_seeds is not None else args.seeds
    unique = {}
    for row in rows:
        if args.n_mc_samples and row["seed"] in wants_ll and "heldout_marginal_ll" not in row:
            continue
        if row.get("code") in (args.curve_models or []) and "ll_curve" not in row:
            continue
        unique[(row["model"], row["seed"])] = row
    return list(unique.values())


def _progress_path(stem: Path, args) -> Path:
    """Per-row log of a run in progress, keyed by its settings, so an interrupted run resumes."""
    key = "_".join(f"{getattr(args, k)}" for k in RUN_SETTINGS)
    return stem.parent / ".progress" / f"{stem.name}_{key}.jsonl"


def model_specs(args) -> list[ModelSpec]:
    """``--models`` if given; else MixSCVI for each of ``--components``, the ensemble objective
    at the largest of them, and SCVI."""
    if args.models:
        return [ModelSpec.parse(m) for m in args.models]
    specs = [ModelSpec("mixscvi", s) for s in args.components]
    return [*specs, ModelSpec("mixscvi", max(args.components), "ensemble"), ModelSpec("scvi")]


def run_dataset(dataset: str, args) -> dict:
    adata, split = prepare(dataset, args.n_genes, args.split_seed, args.max_cells)
    specs = model_specs(args)
    stem = args.out / f"singlecell_{dataset}"
    reuse = args.resume or args.report_only
    done = {(r["model"], r["seed"]): r for r in _reusable_rows(stem, args)} if reuse else {}
    progress = _progress_path(stem, args)
    progress.parent.mkdir(parents=True, exist_ok=True)
    umap_names = {
        ModelSpec("mixscvi", s).name for s in (min(args.components), max(args.components))
    }
    rows, kept = [], {}
    for seed in args.seeds:
        for spec in specs:
            if (spec.name, seed) in done:
                rows.append(done[(spec.name, seed)])
                continue
            if args.report_only:
                continue
            row, model = run_one(spec, adata, split, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with progress.open("a") as log:
                log.write(json.dumps(row) + "\n")
            if spec.name in umap_names and spec.name not in kept:
                kept[spec.name] = model
    if args.report_only and not any(r["model"] == REFERENCE for r in rows):
        raise FileNotFoundError(
            f"--report-only: no finished SCVI rows for {stem} among --seeds with these settings "
            "(the report is paired with SCVI)."
        )
    summary = summarise(with_paired_differences(rows))
    scvi_time = summary.loc[REFERENCE, "seconds_per_epoch"]
    summary["epoch_time_vs_scvi"] = summary["seconds_per_epoch"] / scvi_time
    summary["epoch_time_vs_scvi_std"] = summary["seconds_per_epoch_std"] / scvi_time

    ll_seeds = sorted({r["seed"] for r in rows if "heldout_marginal_ll" in r})
    reported = {(r["model"], r["seed"]) for r in rows}
    payload = {
        "dataset": dataset,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_types": int(adata.obs["cell_type"].nunique()),
        "split": {"train": len(split[0]), "validation": len(split[1]), "test": len(split[2])},
        "seeds": args.seeds,
        "settings": vars(args) | {"out": str(args.out), "datasets": args.datasets},
        "rows": rows,
        # finished rows of other models or seeds, kept so that a later --resume still has them
        "unreported_rows": [r for key, r in done.items() if key not in reported],
        "summary": json.loads(summary.to_json(orient="index", double_precision=15)),
    }
    lines = [
        f"# {dataset}: {adata.n_obs} cells, {adata.n_vars} genes, "
        f"{payload['n_types']} labelled types",
        "",
        f"Split {payload['split']} (seed {args.split_seed}); metrics on the test cells; "
        f"mean ± std over training seeds {args.seeds}"
        + (" (those each model finished: n_seeds)" if args.report_only else "")
        + "; "
        + (
            f"up to {args.max_epochs} epochs with early stopping on the validation cells' bound "
            f"(patience {args.patience})"
            if args.patience
            else f"exactly {args.max_epochs} epochs (no early stopping)"
        )
        + f", batch {args.batch_size}, Adam lr 1e-3, KL warm-up over {args.kl_warmup_epochs} "
        "epochs (linear, from 0 to 1).",
        "",
        f"Command: `{args.command}`",
        "",
        "## Features: posterior mean",
        "",
        *_table(summary, [f"{m}_mean" for m in METRICS]),
        "",
        "## Features: all component means and variances (the paper's)",
        "",
        *_table(summary, [f"{m}_concat" for m in METRICS]),
        "",
        "## Held-out marginal log-likelihood and cost",
        "",
        f"Held-out log p(x): mean over the {split[2].size} test cells of an importance-sampled "
        f"estimate ({args.n_mc_samples} samples, mixture proposal), then mean ± std over the "
        f"training seeds {ll_seeds}; heldout_ll_minus_scvi is the difference to SCVI trained "
        "with the same seed, beats_scvi the share of seeds where it is positive. jsd: the "
        "components' generalized Jensen-Shannon divergence on the test cells (0: identical "
        "components, log S: disjoint). epochs: epochs trained; stopped_early: share of seeds "
        "stopped by early stopping before the maximum; wall_seconds: training time. Times are "
        "only comparable within a run on an otherwise idle machine; benchmarks/results/cost*.md "
        "have the dedicated cost measurements.",
        "",
        *_table(
            summary,
            [
                c
                for c in (
                    "n_seeds",
                    "heldout_marginal_ll",
                    "heldout_ll_minus_scvi",
                    "beats_scvi",
                    "jsd",
                    "epochs",
                    "stopped_early",
                    "wall_seconds",
                    "epoch_time_vs_scvi",
                )
                if c in summary.columns
            ],
        ),
    ]
    tests = paired_tests(rows)
    if not tests.empty:
        payload["paired_tests"] = json.loads(tests.to_json(orient="index", double_precision=15))
        lines += [
            "",
            "## Paired differences in held-out log p(x), with a paired t-test",
            "",
            "Difference to SCVI, to scvi-tools' SCVI with the same `n_layers`, and to the same "
            "configuration at S=1 (the mixture's own share), each where it was run, over the "
            "seeds both finished (mean ± std); p: two-sided paired t-test over "
            "those seeds (with 3-5 seeds only large, consistent differences reach p < 0.05).",
            "",
            *_paired_test_lines(tests),
        ]
    metric_tests = paired_metric_tests(rows)
    if not metric_tests.empty:
        payload["paired_metric_tests"] = json.loads(metric_tests.to_json(orient="records"))
        lines += [
            "",
            "## Paired differences in clustering metrics (posterior mean), Holm-corrected",
            "",
            "Each model minus SCVI trained with the same seed, over the seeds both finished "
            "(at least 3): mean difference (seeds above SCVI, two-sided paired t-test p, and p "
            "after Holm's correction over every test in this table).",
            "",
            *_paired_metric_lines(metric_tests),
        ]
    write_report(stem, payload, lines)
    plot_metrics(summary, stem.parent / f"{stem.name}_metrics.png", dataset)
    plot_curves(rows, stem.parent / f"{stem.name}_ll_vs_time.png", dataset)
    if kept:  # a fully resumed run trained nothing new to draw
        plot_umaps(kept, adata, stem.parent / f"{stem.name}_umap.png")
    print("\n".join(lines), flush=True)
    return payload


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mouse_bladder", "worm_neuron"])
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--models", nargs="+", default=None,
        help="models as in benchmarks._models (scvi, S5, S5:ensemble, S50:shared:A1, ...); "
        "default: S for each of --components, the ensemble at the largest, and SCVI",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--n-genes", type=int, default=1200)
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument(
        "--patience", type=int, default=20,
        help="early-stopping patience in epochs; 0 trains exactly --max-epochs epochs",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--kl-warmup-epochs",
        type=int,
        default=400,
        help="epochs of linear KL warm-up (scvi-tools' default 400); until it ends the models "
        "optimise a beta-weighted objective, not the bound",
    )
    parser.add_argument("--n-mc-samples", type=int, default=1000)
    parser.add_argument(
        "--ll-seeds",
        type=int,
        nargs="+",
        default=None,
        help="compute the held-out likelihood (the costly part) for these seeds only",
    )
    parser.add_argument(
        "--curve-models", nargs="+", default=None,
        help="models (as in --models) that also record held-out log p(x) against training "
        "time, every --curve-every epochs with --curve-samples importance samples",
    )  # fmt: skip
    parser.add_argument("--curve-every", type=int, default=10)
    parser.add_argument("--curve-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished (model, seed) rows of an earlier run with the same settings",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the finished rows of --models x --seeds (implies --resume)",
    )
    parser.add_argument(
        "--replot", type=Path, nargs="+", default=None, help="redraw metric plots from JSON"
    )
    args = parser.parse_args(argv)
    args.command = command_line("benchmarks.singlecell", argv)
    if args.replot:
        for path in args.replot:
            payload = json.loads(path.read_text())
            plot_metrics(
                summarise(payload["rows"]),
                path.with_name(f"{path.stem}_metrics.png"),
                payload["dataset"],
            )
        return []
    if not any(spec.is_reference for spec in model_specs(args)):
        # checked before training: the report pairs every model with SCVI (--resume reuses
        # SCVI's finished rows, so adding it costs nothing when they exist)
        parser.error("--models must include scvi: the report pairs every model with SCVI")
    return [run_dataset(d, args) for d in args.datasets]


if __name__ == "__main__":
    main()
