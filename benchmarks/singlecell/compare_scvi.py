"""Epoch time and held-out marginal log-likelihood: scvi-tools SCVI vs MixSCVI (S = 1, S = 5).

All models are trained in one process on the same cells, genes, split and number of epochs;
the held-out marginal LL uses importance sampling (the mixture as proposal for MixSCVI, the
tight estimator). Writes ``benchmarks/results/compare_scvi_<dataset>.{json,md}``.

Usage::

    python -m benchmarks.singlecell.compare_scvi --dataset pbmc3k --epochs 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scanpy as sc
import scvi

from scmixvae import MixSCVI
from scmixvae.datasets import load_counts

from .._report import machine_description, write_report

RESULTS = Path(__file__).parents[1] / "results"


def _prepare(dataset: str, n_top_genes: int, seed: int):
    adata = load_counts(dataset)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer="counts", subset=True
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(adata.n_obs)
    n_test = adata.n_obs // 10
    return adata[np.sort(order[n_test:])].copy(), adata[np.sort(order[:n_test])].copy()


def _fit(name: str, train, test, epochs: int, batch_size: int, n_mc: int, seed: int) -> dict:
    scvi.settings.seed = seed
    train, test = train.copy(), test.copy()
    if name == "SCVI":
        scvi.model.SCVI.setup_anndata(train, layer="counts")
        model = scvi.model.SCVI(train)
    else:
        n_components = int(name.split("S=")[1].rstrip(")"))
        MixSCVI.setup_anndata(train, layer="counts")
        model = MixSCVI(train, n_components=n_components)
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        early_stopping=False,
    )
    train_seconds = time.perf_counter() - start
    model.module.eval()
    type(model).setup_anndata(test, layer="counts")
    start = time.perf_counter()
    per_cell = model.get_marginal_ll(test, n_mc_samples=n_mc, return_mean=False)
    return {
        "per_cell_marginal_ll": np.asarray(per_cell, dtype=float).ravel().tolist(),
        "model": name,
        "epochs": epochs,
        "seconds_per_epoch": train_seconds / epochs,
        "heldout_marginal_ll": float(np.mean(np.asarray(per_cell))),
        "heldout_marginal_ll_sem": float(np.std(np.asarray(per_cell)) / np.sqrt(len(per_cell))),
        "marginal_ll_seconds": time.perf_counter() - start,
        "train_elbo": float(model.get_elbo()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pbmc3k")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-mc-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["SCVI", "MixSCVI(S=1)", "MixSCVI(S=5)"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    train, test = _prepare(args.dataset, args.n_top_genes, args.seed)
    rows = [
        _fit(m, train, test, args.epochs, args.batch_size, args.n_mc_samples, args.seed)
        for m in args.models
    ]
    reference = next((r for r in rows if r["model"] == "SCVI"), rows[0])
    ref_ll = np.asarray(reference["per_cell_marginal_ll"])
    for r in rows:
        r["epoch_time_vs_scvi"] = r["seconds_per_epoch"] / reference["seconds_per_epoch"]
        # the same held-out cells for every model: the paired difference is the informative one
        diff = np.asarray(r.pop("per_cell_marginal_ll")) - ref_ll
        r["ll_minus_scvi"] = float(diff.mean())
        r["ll_minus_scvi_sem"] = float(diff.std() / np.sqrt(len(diff)))
    result = {
        "dataset": args.dataset,
        "n_train_cells": train.n_obs,
        "n_test_cells": test.n_obs,
        "n_genes": train.n_vars,
        "marginal_ll": f"importance sampling, {args.n_mc_samples} samples per cell; "
        "MixSCVI: mixture proposal, tight estimator",
        "machine": f"{machine_description()}, scvi-tools {scvi.__version__}",
        "command": "python -m benchmarks.singlecell.compare_scvi " + " ".join(argv or []),
        "rows": rows,
    }
    lines = [
        f"# SCVI vs MixSCVI on {args.dataset} ({train.n_obs} train / {test.n_obs} held-out "
        f"cells, {train.n_vars} genes, {args.epochs} epochs)",
        "",
        f"Held-out marginal LL: {result['marginal_ll']}. Machine: {result['machine']}.",
        "",
        "| model | s / epoch | vs SCVI | held-out log p(x) (± s.e.m.) | minus SCVI, paired "
        "(± s.e.m.) | train ELBO |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['seconds_per_epoch']:.2f} | {r['epoch_time_vs_scvi']:.2f}x | "
            f"{r['heldout_marginal_ll']:.2f} ± {r['heldout_marginal_ll_sem']:.2f} | "
            f"{r['ll_minus_scvi']:+.2f} ± {r['ll_minus_scvi_sem']:.2f} | {r['train_elbo']:.2f} |"
        )
    write_report(args.out / f"compare_scvi_{args.dataset}", result, lines)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
