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
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import lightning.pytorch as pl
import numpy as np
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

from .._models import REFERENCE, ModelSpec
from .._report import command_line, write_report
from .report import (
    METRICS,
    _paired_metric_lines,
    _paired_test_lines,
    _table,
    paired_metric_tests,
    paired_tests,
    plot_curves,
    plot_metrics,
    plot_umaps,
    summarise,
    with_paired_differences,
)

RESULTS = Path(__file__).parents[1] / "results"


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
    model = spec.build(data, layer="counts", pseudo_input_cells=split[0])
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
