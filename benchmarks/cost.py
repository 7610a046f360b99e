"""Cost of MixSCVI against scvi-tools SCVI: epoch time and memory, against S and the cell count.

Protocol 4 of the single-cell benchmark. Every (model, cell count) pair trains in its own
process on synthetic sparse counts (see :func:`benchmarks.scale.synthetic_counts`) with the
benchmark's architecture (n_latent 10, n_hidden 128, ZINB, batch 512), so that its peak
resident memory is its own. Measured per pair:

* seconds per epoch: the median wall time of the second half of the epochs (the first steps
  carry one-off warm-up costs); small data sets run enough epochs for ``--min-steps`` steps;
* peak resident memory while training, and its increase over the memory held once the data
  are loaded (the part the model and its optimiser add).

Writes ``benchmarks/results/cost.{json,md}`` and ``cost.png``.

Usage::

    python -m benchmarks.cost --cells 1000 3000 10000 30000 100000 --components 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ._memory import lifetime_peak_rss_gb, reset_peak_rss, status_gb
from ._report import write_report
from .scale import synthetic_counts

RESULTS = Path(__file__).parent / "results"


def model_name(n_components: int) -> str:
    """Row label: ``0`` components stands for scvi-tools' SCVI."""
    return "SCVI" if n_components == 0 else f"MixSCVI(S={n_components})"


def run_child(n_cells: int, n_components: int, args: argparse.Namespace) -> dict:
    """Train one model on ``n_cells`` synthetic cells and measure it (runs in a child process)."""
    import lightning.pytorch as pl
    import scvi

    from scmixvae import MixSCVI

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    scvi.settings.seed = 0
    adata = synthetic_counts(n_cells, args.genes)
    rss_with_data = status_gb("VmRSS")
    reset = reset_peak_rss()
    cls = scvi.model.SCVI if n_components == 0 else MixSCVI
    cls.setup_anndata(adata)
    options = {"n_latent": 10, "n_hidden": 128, "gene_likelihood": "zinb"}
    if n_components:
        options["n_components"] = n_components
    model = cls(adata, **options)
    timer = EpochTimer()
    # The first steps run slowly (allocator and oneDNN warm-up), so small data sets get more
    # epochs, and only the second half of the epochs is timed.
    steps_per_epoch = -(-n_cells // args.batch_size)
    n_epochs = max(args.epochs, -(-args.min_steps // steps_per_epoch))
    model.train(
        max_epochs=n_epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        plan_kwargs={"lr": 1e-3},
        early_stopping=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    timed = timer.seconds[len(timer.seconds) // 2 :]
    # without a reset, the lifetime peak also counts building the data: an upper bound
    peak = status_gb("VmHWM") if reset else lifetime_peak_rss_gb()
    return {
        "model": model_name(n_components),
        "n_components": n_components,
        "n_cells": n_cells,
        "n_genes": args.genes,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": timer.seconds,
        "seconds_per_epoch": statistics.median(timed),
        "rss_gb_with_data": rss_with_data,
        "peak_rss_gb_training": peak,
        "training_rss_increase_gb": peak - rss_with_data,
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's epoch time and memory increase relative to SCVI on the same cells."""
    reference = {r["n_cells"]: r for r in rows if r["n_components"] == 0}
    for row in rows:
        scvi_row = reference.get(row["n_cells"])
        if scvi_row is None:
            continue
        row["epoch_time_vs_scvi"] = row["seconds_per_epoch"] / scvi_row["seconds_per_epoch"]
        row["rss_increase_vs_scvi"] = (
            row["training_rss_increase_gb"] / scvi_row["training_rss_increase_gb"]
        )
        row["peak_rss_vs_scvi"] = row["peak_rss_gb_training"] / scvi_row["peak_rss_gb_training"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scmixvae.io import atomic_path

    fig, (by_cells, by_s) = plt.subplots(1, 2, figsize=(9, 3.4))
    for n_components in sorted({r["n_components"] for r in rows}):
        mine = sorted((r for r in rows if r["n_components"] == n_components),
                      key=lambda r: r["n_cells"])  # fmt: skip
        by_cells.plot([r["n_cells"] for r in mine], [r["seconds_per_epoch"] for r in mine],
                      "o-", label=model_name(n_components))  # fmt: skip
    by_cells.set(xscale="log", yscale="log", xlabel="cells", ylabel="seconds per epoch")
    by_cells.legend(fontsize=7)
    for n_cells in sorted({r["n_cells"] for r in rows}):
        mix = sorted((r for r in rows if r["n_cells"] == n_cells and r["n_components"]),
                     key=lambda r: r["n_components"])  # fmt: skip
        if all("epoch_time_vs_scvi" in r for r in mix):
            by_s.plot([r["n_components"] for r in mix], [r["epoch_time_vs_scvi"] for r in mix],
                      "o-", label=f"{n_cells:,} cells")  # fmt: skip
    by_s.axhline(1.0, ls="--", c="grey", label="SCVI")
    by_s.set(xlabel="components S", ylabel="epoch time / SCVI's")
    by_s.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def report_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    lines = [
        "# Cost of MixSCVI against SCVI (protocol 4)",
        "",
        f"Synthetic Poisson counts, {args.genes} genes; n_latent 10, n_hidden 128, ZINB, "
        f"batch {args.batch_size}; at least {args.epochs} epochs and {args.min_steps} steps per "
        "model, seconds per epoch = median of the second half of the epochs; one process per "
        "model and size, run one at a time on an otherwise idle 2-core CPU. Memory: peak "
        "resident set while training; its increase over the resident set once the data are "
        "loaded is what the model itself adds.",
        "",
        "| cells | model | parameters | s / epoch | time vs SCVI | peak RSS (GB) | "
        "increase over data (GB) | increase vs SCVI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["n_cells"], r["n_components"])):
        lines.append(
            f"| {row['n_cells']:,} | {row['model']} | {row['n_parameters']:,} | "
            f"{row['seconds_per_epoch']:.3f} | {row.get('epoch_time_vs_scvi', np.nan):.2f}x | "
            f"{row['peak_rss_gb_training']:.2f} | {row['training_rss_increase_gb']:.3f} | "
            f"{row.get('rss_increase_vs_scvi', np.nan):.2f}x |"
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--genes", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--min-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    if args.child is not None:
        print(json.dumps(run_child(*args.child, args)))
        return []

    rows = []
    for n_cells in args.cells:
        for n_components in [0, *args.components]:
            cmd = [sys.executable, "-m", "benchmarks.cost", "--child", str(n_cells),
                   str(n_components), "--genes", str(args.genes), "--epochs", str(args.epochs),
                   "--min-steps", str(args.min_steps),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    add_ratios(rows)
    stem = args.out / "cost"
    lines = report_lines(rows, args)
    write_report(stem, {"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, lines)
    plot(rows, stem.with_suffix(".png"))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
