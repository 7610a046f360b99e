"""Peak memory and epoch time of MixSCVI against the number of cells (synthetic sparse counts).

Each size runs in its own process, so its peak resident memory (``ru_maxrss``) is its own.
Counts are Poisson draws with log-normal gene means and cell sizes (about 10% non-zero, like
droplet data), built in chunks straight into CSR so the full dense matrix never exists.
Writes ``benchmarks/results/scale.{json,md}``.

Usage::

    python -m benchmarks.cost.scale --cells 100000 300000 1000000 --genes 2000 --components 5
    python -m benchmarks.cost.scale --cells 100000 --backed   # on-disk AnnData (h5ad, backed="r")
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .._memory import lifetime_peak_rss_gb, reset_peak_rss, status_gb
from .._report import write_report

RESULTS = Path(__file__).parents[1] / "results"


def synthetic_counts(n_cells: int, n_genes: int, seed: int = 0, chunk: int = 20_000):
    """AnnData of Poisson counts, ``float32`` CSR, built chunk by chunk."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    gene_means = rng.lognormal(mean=-3.0, sigma=1.5, size=n_genes).astype(np.float32)
    blocks = []
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        size = rng.lognormal(mean=0.0, sigma=0.5, size=(n, 1)).astype(np.float32)
        block = rng.poisson(size * gene_means).astype(np.float32)
        blocks.append(sp.csr_matrix(block))
    adata = ad.AnnData(sp.vstack(blocks, format="csr"))
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    return adata


def run_child(args: argparse.Namespace) -> dict:
    import anndata as ad
    import scvi

    from scmixvae import MixSCVI

    scvi.settings.seed = 0
    start = time.perf_counter()
    adata = synthetic_counts(args.child, args.genes)
    generate_seconds = time.perf_counter() - start
    nnz = adata.X.nnz
    if args.backed:
        path = Path(tempfile.mkdtemp()) / "counts.h5ad"
        adata.write_h5ad(path)
        del adata
        adata = ad.read_h5ad(path, backed="r")
    rss_data = lifetime_peak_rss_gb()
    reset = reset_peak_rss()
    MixSCVI.setup_anndata(adata)
    model = MixSCVI(adata, n_components=args.components)
    steps_per_epoch = -(-adata.n_obs // args.batch_size)
    train_kwargs = {}
    if args.max_steps:
        train_kwargs["max_steps"] = args.max_steps
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        early_stopping=False,
        **train_kwargs,
    )
    seconds = time.perf_counter() - start
    steps = model.trainer.global_step if hasattr(model, "trainer") else steps_per_epoch
    return {
        "steps_run": int(steps),
        "steps_per_epoch": steps_per_epoch,
        "seconds_per_step": seconds / max(1, steps),
        "epoch_time_extrapolated": bool(steps < steps_per_epoch * args.epochs),
        "n_cells": args.child,
        "n_genes": args.genes,
        "nnz": int(nnz),
        "backed": args.backed,
        "n_components": args.components,
        "epochs": args.epochs,
        "seconds_per_epoch": seconds / max(1, steps) * steps_per_epoch,
        "generate_seconds": generate_seconds,
        "peak_rss_gb_after_data": rss_data,
        "peak_rss_gb": lifetime_peak_rss_gb(),
        "peak_rss_gb_during_training": status_gb("VmHWM") if reset else None,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backed", action="store_true")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps; the epoch time is then extrapolated (and marked)",
    )
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(args)))
        return []

    rows = []
    for n_cells in args.cells:
        cmd = [sys.executable, "-m", "benchmarks.cost.scale", "--child", str(n_cells),
               "--genes", str(args.genes), "--components", str(args.components),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]  # fmt: skip
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        if args.backed:
            cmd.append("--backed")
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)

    stem = args.out / ("scale_backed" if args.backed else "scale")
    lines = [
        f"# MixSCVI (S={args.components}) scaling with the number of cells",
        "",
        f"Synthetic Poisson counts, {args.genes} genes, CSR float32"
        f"{', on-disk (backed) AnnData' if args.backed else ''}; batch {args.batch_size}; "
        "2 CPU cores; one process per size.",
        "",
        "| cells | non-zeros | steps run | s / step | s / epoch | peak RSS building the data "
        "(GB) | peak RSS while training (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['n_cells']:,} | {r['nnz']:,} | {r['steps_run']} of {r['steps_per_epoch']} | "
        f"{r['seconds_per_step']:.3f} | {r['seconds_per_epoch']:.0f}"
        f"{' (extrapolated)' if r['epoch_time_extrapolated'] else ''} | "
        f"{r['peak_rss_gb_after_data']:.2f} | {_fmt(r.get('peak_rss_gb_during_training'))} |"
        for r in rows
    ]
    write_report(stem, rows, lines)
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
