"""Seconds for ``tl.mixscvi``'s outputs with importance-sampled and closed-form diagnostics.

Trains MixSCVI once (Kang 2018, 13,999 cells, 2,000 variable genes, ``--epochs`` epochs: the
diagnostics' cost does not depend on the weights), then times
:func:`scmixvae.tl.store_outputs` with ``diagnostics="importance"`` (every release before this
one) and ``diagnostics="means"`` (the default now), in the same process, and compares the
dominant components they give. Writes ``benchmarks/results/diagnostics_cost.{json,md}``.

Usage::

    python -m benchmarks.cost.diagnostics --dataset kang_ifnb --n-components 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scanpy as sc
import scvi

from scmixvae import MixSCVI, tl
from scmixvae.datasets import load_counts

from .._report import write_report

RESULTS = Path(__file__).parents[1] / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kang_ifnb")
    parser.add_argument("--n-components", type=int, default=5)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ll-cells", type=int, default=500, help="cells timed for the likelihood")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    scvi.settings.seed = 0
    adata = load_counts(args.dataset)
    sc.pp.highly_variable_genes(adata, n_top_genes=args.n_genes, flavor="seurat_v3",
                                layer="counts", subset=True)  # fmt: skip
    MixSCVI.setup_anndata(adata, layer="counts")
    model = MixSCVI(adata, n_components=args.n_components)
    start = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=512, enable_progress_bar=False)
    train_seconds = time.perf_counter() - start
    seconds, dominant = {}, {}
    for method in ("importance", "means"):
        start = time.perf_counter()
        tl.store_outputs(model, adata, key_added=f"X_{method}", diagnostics=method)
        seconds[method] = time.perf_counter() - start
        dominant[method] = adata.obs[f"X_{method}_component"].to_numpy()
    agreement = float(np.mean(dominant["importance"] == dominant["means"]))
    # what a user pays for the likelihood and DE on these data, measured on a part of them
    subset = np.random.default_rng(0).choice(adata.n_obs, args.ll_cells, replace=False)
    start = time.perf_counter()
    model.get_marginal_ll(indices=subset, n_mc_samples=1000)
    ll_seconds = (time.perf_counter() - start) * adata.n_obs / args.ll_cells
    sc.pp.neighbors(adata, use_rep="X_means", random_state=0)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    n_clusters = adata.obs["leiden"].nunique()
    start = time.perf_counter()
    model.differential_expression(groupby="leiden", group1=adata.obs["leiden"].cat.categories[0])
    de_seconds = (time.perf_counter() - start) * n_clusters
    payload = {"settings": vars(args) | {"out": str(args.out)}, "n_cells": adata.n_obs,
               "train_seconds": train_seconds, "store_outputs_seconds": seconds,
               "dominant_component_agreement": agreement,
               "marginal_ll_all_cells_seconds_extrapolated": ll_seconds,
               "de_all_clusters_seconds_extrapolated": de_seconds,
               "n_leiden_clusters": n_clusters}  # fmt: skip
    lines = [
        f"# tl.mixscvi outputs on {args.dataset}: {adata.n_obs} cells x {adata.n_vars} genes, "
        f"S = {args.n_components}",
        "",
        "Seconds for `tl.store_outputs` (latent, responsibilities, dominant component, "
        "uncertainty, JSD), this CPU, same process and model:",
        "",
        "| diagnostics | seconds |",
        "|---|---|",
        f"| importance (responsibilities from 10 draws x S per cell, JSD from 50 draws x S) | "
        f"{seconds['importance']:.1f} |",
        f"| means (closed form, no decoding; the default) | {seconds['means']:.1f} |",
        "",
        f"Training ({args.epochs} epochs, batch 512) took {train_seconds:.0f} s. The dominant "
        f"component is the same for {agreement:.0%} of the cells under both methods.",
        "",
        f"Other costs on these data: `get_marginal_ll(n_mc_samples=1000)` on all cells would "
        f"take about {ll_seconds / 60:.0f} minutes (timed on {args.ll_cells} cells, scaled to "
        f"{adata.n_obs}); `differential_expression` over the {n_clusters} leiden clusters "
        f"(one vs rest each) about {de_seconds / 60:.0f} minutes (timed on one cluster, "
        f"times {n_clusters}).",
    ]
    write_report(args.out / "diagnostics_cost", payload, lines)
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
