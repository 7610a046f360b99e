"""Cost of MixSCVI against scvi-tools SCVI: epoch time and memory, against S and the cell count.

Protocol 4 of the single-cell benchmark. Every (model, cell count) pair trains in its own
process on synthetic sparse counts (see :func:`benchmarks.scale.synthetic_counts`) with the
benchmark's architecture (n_latent 10, n_hidden 128, ZINB, batch 512), so that its peak
resident memory is its own. Models are named as in :mod:`benchmarks._models` (``scvi``,
``S5``, ``S50:shared:A1``, ...). With ``--repeats R`` every model runs ``R`` times, the models
interleaved (A B C, A B C, ...) so that a drift of the machine's speed hits them alike; the
reported time is the fastest repeat, since other load on a shared machine only ever adds time
(every repeat is listed too). Measured per pair:

* seconds per epoch: the median wall time of the second half of the epochs (the first steps
  carry one-off warm-up costs); small data sets run enough epochs for ``--min-steps`` steps;
* peak resident memory while training, and its increase over the memory held once the data
  are loaded (the part the model and its optimiser add).

Writes ``benchmarks/results/cost.{json,md}`` and ``cost.png``.

Usage::

    python -m benchmarks.cost --cells 1000 3000 10000 30000 100000 --models scvi S1 S2 S3 S4 S5
    python -m benchmarks.cost --cells 10000 --repeats 3 --stem cost_large_s \
        --models scvi S5 S5:A1 S5:shared:A1 S50:shared:A1 S200:shared:A1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from .._memory import lifetime_peak_rss_gb, reset_peak_rss, status_gb
from .._models import REFERENCE, ModelSpec
from .._report import machine_description, write_report
from .._timing import EpochTimer
from .scale import synthetic_counts

RESULTS = Path(__file__).parents[1] / "results"


def run_child(n_cells: int, spec: ModelSpec, args: argparse.Namespace) -> dict:
    """Train one model on ``n_cells`` synthetic cells and measure it (runs in a child process)."""
    import scvi
    import torch

    scvi.settings.seed = 0
    adata = synthetic_counts(n_cells, args.genes)
    rss_with_data = status_gb("VmRSS")
    reset = reset_peak_rss()
    model = spec.build(adata)
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
        **spec.train_kwargs,
    )
    timed = timer.seconds[len(timer.seconds) // 2 :]
    # without a reset, the lifetime peak also counts building the data: an upper bound
    peak = status_gb("VmHWM") if reset else lifetime_peak_rss_gb()
    return {
        "model": spec.name,
        "code": spec.code,
        "n_components": spec.n_components if spec.kind == "mixscvi" else 0,
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
        "device": machine_description(),
        # on a GPU the model's memory is there, not in the resident set
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9
        if torch.cuda.is_available()
        else None,
    }


def merge_repeats(rows: list[dict]) -> list[dict]:
    """One row per (model, cells): the fastest repeat's time, the median memory."""
    merged: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        merged.setdefault((row["model"], row["n_cells"]), []).append(row)
    out = []
    for repeats in merged.values():
        row = dict(repeats[0])
        row["seconds_per_epoch"] = min(r["seconds_per_epoch"] for r in repeats)
        for key in ("peak_rss_gb_training", "training_rss_increase_gb"):
            row[key] = statistics.median(r[key] for r in repeats)
        row["repeat_seconds_per_epoch"] = [r["seconds_per_epoch"] for r in repeats]
        out.append(row)
    return out


def add_ratios(rows: list[dict]) -> None:
    """Each row's epoch time and memory increase relative to SCVI on the same cells."""
    reference = {r["n_cells"]: r for r in rows if r["model"] == REFERENCE}
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

    fig, (by_cells, by_model) = plt.subplots(1, 2, figsize=(10, 3.6))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["n_cells"])
        by_cells.plot([r["n_cells"] for r in mine], [r["seconds_per_epoch"] for r in mine],
                      "o-", label=model)  # fmt: skip
    by_cells.set(xscale="log", yscale="log", xlabel="cells", ylabel="seconds per epoch")
    by_cells.legend(fontsize=6)
    for n_cells in sorted({r["n_cells"] for r in rows}):
        mine = [next(r for r in rows if r["model"] == m and r["n_cells"] == n_cells)
                for m in models if any(r["model"] == m and r["n_cells"] == n_cells
                                       for r in rows)]  # fmt: skip
        if all("epoch_time_vs_scvi" in r for r in mine):
            by_model.plot(range(len(mine)), [r["epoch_time_vs_scvi"] for r in mine], "o-",
                          label=f"{n_cells:,} cells")  # fmt: skip
            by_model.set_xticks(range(len(mine)), [r["model"] for r in mine], rotation=35,
                                ha="right", fontsize=6)  # fmt: skip
    by_model.axhline(1.0, ls="--", c="grey", label="SCVI")
    by_model.set(ylabel="epoch time / SCVI's")
    by_model.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def report_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    device = rows[0].get("device", "2-core CPU") if rows else "2-core CPU"
    on_gpu = any(r.get("gpu_peak_gb") is not None for r in rows)
    lines = [
        "# Cost of MixSCVI against SCVI (protocol 4)",
        "",
        f"Synthetic Poisson counts, {args.genes} genes; n_latent 10, n_hidden 128, ZINB, "
        f"batch {args.batch_size}; at least {args.epochs} epochs and {args.min_steps} steps per "
        "model, seconds per epoch = median of the second half of the epochs; one process per "
        f"model and size, run one at a time on an otherwise idle {device}, {args.repeats} "
        "repeat(s) with the models interleaved; s / epoch is the fastest repeat (others are "
        "listed: load from other tenants of the machine only adds time). Memory: peak resident "
        "set while training (median over repeats); its increase over the resident set once the "
        "data are loaded is what the model itself adds."
        + (
            " On the GPU the model's memory is on the device: GPU peak is torch's peak "
            "allocated GPU memory."
            if on_gpu
            else ""
        ),
        "",
        "| cells | model | parameters | s / epoch | time vs SCVI | repeats (s / epoch) | "
        "peak RSS (GB) | increase over data (GB) | increase vs SCVI |"
        + (" GPU peak (GB) |" if on_gpu else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else ""),
    ]
    order = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
    for row in sorted(rows, key=lambda r: (r["n_cells"], order[r["model"]])):
        lines.append(
            f"| {row['n_cells']:,} | {row['model']} | {row['n_parameters']:,} | "
            f"{row['seconds_per_epoch']:.3f} | {row.get('epoch_time_vs_scvi', np.nan):.2f}x | "
            f"{', '.join(f'{t:.2f}' for t in row.get('repeat_seconds_per_epoch', []))} | "
            f"{row['peak_rss_gb_training']:.2f} | {row['training_rss_increase_gb']:.3f} | "
            f"{row.get('rss_increase_vs_scvi', np.nan):.2f}x |"
            + (f" {row['gpu_peak_gb']:.3f} |" if on_gpu else "")
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument(
        "--models", nargs="+", default=["scvi", "S1", "S2", "S3", "S4", "S5"],
        help="models as in benchmarks._models: scvi, S5, S5:ensemble, S50:shared:A1, ...",
    )  # fmt: skip
    parser.add_argument("--genes", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--min-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per model")
    parser.add_argument("--stem", default="cost", help="results file name (without suffix)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    specs = [ModelSpec.parse(m) for m in args.models]
    if not any(spec.is_reference for spec in specs):
        parser.error("--models must include scvi: every ratio is to SCVI")
    if args.child is not None:
        print(json.dumps(run_child(int(args.child[0]), ModelSpec.parse(args.child[1]), args)))
        return []

    rows = []
    for n_cells in args.cells:
        for _ in range(args.repeats):
            for spec in specs:
                cmd = [sys.executable, "-m", "benchmarks.cost", "--child", str(n_cells),
                       spec.code, "--genes", str(args.genes), "--epochs", str(args.epochs),
                       "--min-steps", str(args.min_steps),
                       "--batch-size", str(args.batch_size)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
                # rewritten after every run, so that a run cut short keeps what it measured
                merged, lines = _write(rows, args)
    plot(merged, (args.out / args.stem).with_suffix(".png"))
    print("\n".join(lines))
    return merged


def _write(rows: list[dict], args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Write the report of the runs so far; return its rows and markdown lines."""
    merged = merge_repeats(rows)
    add_ratios(merged)
    lines = report_lines(merged, args)
    payload = {"settings": vars(args) | {"out": str(args.out)}, "rows": merged, "runs": rows}
    write_report(args.out / args.stem, payload, lines)
    return merged, lines


if __name__ == "__main__":
    main()
