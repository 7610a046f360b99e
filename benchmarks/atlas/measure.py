"""Peak memory, throughput and held-out likelihood of training from disk against memory.

Two studies on the atlas written by ``benchmarks.atlas.make_data``:

- ``throughput``: for each size, store (``memory``: the h5ad read whole; ``backed``: the h5ad
  read with ``backed="r"``; ``soma``: the TileDB-SOMA experiment through
  :func:`scmixvae.singlecell.soma.soma_datamodule`) and model (``scvi``, ``S5``), one process
  trains for ``--max-steps`` minibatches (or a whole epoch with ``--max-steps 0``) and reports
  its lifetime peak resident memory and the cells per second after the first 10 steps.
  Configurations run one after another, never two at once.
- ``quality``: MixSCVI S = 5 trained on the 100k-cell atlas from memory and from SOMA, same
  seeds and epochs; held-out log p(x) per cell (importance-sampled) on 5,000 further cells.

Usage::

    python -m benchmarks.atlas.measure throughput --data /data/atlas --cells 1000000 2000000
    python -m benchmarks.atlas.measure quality --data /data/atlas --seeds 0 1 2 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from scmixvae.singlecell.soma import DEFAULT_MEMORY_BUDGET

from .._memory import lifetime_peak_rss_gb
from .._report import LoadMonitor, command_line, machine_description, write_report

RESULTS = Path(__file__).parents[1] / "results"
STORES = ("memory", "backed", "soma")
MODELS = ("scvi", "S5")
WARMUP_STEPS = 10
DEFAULT_BUDGET_MIB = DEFAULT_MEMORY_BUDGET // 2**20


class StepClock(pl.Callback):
    """Wall time at the end of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())


def _model(kind: str, store: str, path: Path, batch_size: int, seed: int,
           memory_budget_mib: int = DEFAULT_BUDGET_MIB):  # fmt: skip
    """The model and its training arguments for one store."""
    import anndata as ad
    import scvi

    from scmixvae import MixSCVI
    from scmixvae.singlecell.soma import soma_datamodule

    cls = scvi.model.SCVI if kind == "scvi" else MixSCVI
    options = {} if kind == "scvi" else {"n_components": 5}
    if store == "soma":
        name = "SCVI" if kind == "scvi" else "MixSCVI"
        dm = soma_datamodule(path, "batch", batch_size=batch_size, train_size=1.0, seed=seed,
                             model_name=name, memory_budget=memory_budget_mib * 2**20)  # fmt: skip
        return cls(adata=None, registry=dm.registry, **options), {"datamodule": dm}
    adata = ad.read_h5ad(path, backed="r" if store == "backed" else None)
    cls.setup_anndata(adata, batch_key="batch")
    return cls(adata, **options), {"batch_size": batch_size, "train_size": 1.0}


def run_child(args: argparse.Namespace) -> dict:
    import scvi

    scvi.settings.seed = args.seed
    start = time.perf_counter()
    model, data = _model(args.model, args.store, Path(args.path), args.batch_size, args.seed,
                         args.memory_budget)  # fmt: skip
    setup_seconds = time.perf_counter() - start
    clock = StepClock()
    limit = {"max_steps": args.max_steps} if args.max_steps else {}
    start = time.perf_counter()
    model.train(max_epochs=1, enable_progress_bar=False, early_stopping=False,
                callbacks=[clock], **data, **limit)  # fmt: skip
    seconds = time.perf_counter() - start
    steps = len(clock.times)
    steady = clock.times[-1] - clock.times[WARMUP_STEPS - 1]
    return {
        "store": args.store,
        "model": args.model,
        "memory_budget_mib": args.memory_budget if args.store == "soma" else None,
        "n_cells": args.cells,
        "batch_size": args.batch_size,
        "steps": steps,
        "full_epoch": not args.max_steps,
        "setup_seconds": setup_seconds,
        "train_seconds": seconds,
        "cells_per_second": (steps - WARMUP_STEPS) * args.batch_size / steady,
        "peak_rss_gb": lifetime_peak_rss_gb(),  # GiB (ru_maxrss KiB / 1024²)
    }


def throughput(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_cells in args.cells:
        for store, budget in _store_budgets(args):
            for kind in args.models:
                suffix = "soma" if store == "soma" else "h5ad"
                path = args.data / f"atlas_{n_cells}.{suffix}"
                cmd = [sys.executable, "-m", "benchmarks.atlas.measure", "child"]
                cmd += ["--store", store, "--model", kind, "--path", str(path)]
                cmd += ["--cells", str(n_cells), "--batch-size", str(args.batch_size)]
                cmd += ["--max-steps", str(args.max_steps), "--memory-budget", str(budget)]
                with LoadMonitor() as load:
                    done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{store} {kind} {n_cells}: {done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["peak_load"] = load.peak
                rows.append(row)
                print(json.dumps(row), flush=True)
    _write_throughput(rows, args)
    return rows


def _store_budgets(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(store, TileDB read budget in MiB) pairs: every budget for SOMA, one run otherwise."""
    pairs = []
    for store in args.stores:
        budgets = args.memory_budgets if store == "soma" else args.memory_budgets[:1]
        pairs += [(store, budget) for budget in budgets]
    return pairs


def _label(row: dict) -> str:
    budget = row.get("memory_budget_mib")
    return row["store"] + (f" ({budget:,} MiB reads)" if budget else "")


def _growth_lines(rows: list[dict]) -> list[str]:
    """Peak memory at the largest size against the smallest, per store and model."""
    sizes = sorted({r["n_cells"] for r in rows})
    if len(sizes) < 2:
        return []
    lines = ["", f"Peak RSS at {sizes[-1]:,} cells against {sizes[0]:,} (goal: within 10 %):", ""]
    for r in rows:
        if r["n_cells"] != sizes[0]:
            continue
        big = next((b for b in rows if b["n_cells"] == sizes[-1] and _label(b) == _label(r)
                    and b["model"] == r["model"]), None)  # fmt: skip
        if big:
            change = big["peak_rss_gb"] / r["peak_rss_gb"] - 1
            lines.append(f"- {_label(r)}, {r['model']}: {r['peak_rss_gb']:.2f} -> "
                         f"{big['peak_rss_gb']:.2f} GiB ({change:+.0%})")  # fmt: skip
    return lines


def _write_throughput(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Training from disk at atlas scale: peak memory and throughput",
        "",
        f"Command: `{command_line('benchmarks.atlas.measure', None)}`",
        "",
        f"Machine: {machine_description()}; one configuration at a time, each in its own "
        f"process (peak RSS is the process's lifetime peak: data, model and training). Cells: "
        f"Kang's PBMCs, binomially thinned into distinct cells, 2,000 genes "
        f"(`benchmarks.atlas.make_data`); batch {args.batch_size}; "
        + (f"the first {args.max_steps} minibatches of an epoch" if args.max_steps else
           "one whole epoch")
        + f"; cells/s after the first {WARMUP_STEPS} steps.",
        "",
        "| cells | store | model | peak RSS (GiB) | cells / s | vs memory, same model and size "
        "| setup (s) | steps | peak load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        base = next((b for b in rows if b["store"] == "memory" and b["model"] == r["model"]
                     and b["n_cells"] == r["n_cells"]), None)  # fmt: skip
        ratio = f"{r['cells_per_second'] / base['cells_per_second']:.2f}x" if base else "–"
        lines.append(
            f"| {r['n_cells']:,} | {_label(r)} | {r['model']} | {r['peak_rss_gb']:.2f} "
            f"| {r['cells_per_second']:,.0f} | {ratio} | {r['setup_seconds']:.0f} | {r['steps']} "
            f"| {r['peak_load']:.1f} |"
        )
    lines += _growth_lines(rows)
    write_report(args.out / args.stem, rows, lines)
    print("\n".join(lines))


def quality(args: argparse.Namespace) -> list[dict]:
    """Held-out log p(x) of MixSCVI trained on 100k cells from memory and from SOMA."""
    import anndata as ad
    import scvi

    from scmixvae import MixSCVI

    heldout = ad.read_h5ad(args.data / "heldout_5000.h5ad")
    MixSCVI.setup_anndata(heldout, batch_key="batch")
    rows = []
    for seed in args.seeds:
        for store in ("memory", "soma"):
            scvi.settings.seed = seed
            suffix = "soma" if store == "soma" else "h5ad"
            path = args.data / f"atlas_{args.quality_cells}.{suffix}"
            model, data = _model("S5", store, path, args.batch_size, seed)
            start = time.perf_counter()
            warmup = {"n_epochs_kl_warmup": args.epochs // 2 or None}  # None: no warm-up
            model.train(max_epochs=args.epochs, enable_progress_bar=False, early_stopping=False,
                        plan_kwargs=warmup, **data)  # fmt: skip
            seconds = time.perf_counter() - start
            twin = MixSCVI(heldout, n_components=5)  # the same weights, on in-memory cells
            twin.module.load_state_dict(model.module.state_dict())
            twin.is_trained_ = True
            scvi.settings.seed = 1000 + seed  # the same importance draws for both stores
            per_cell = twin.get_marginal_ll(n_mc_samples=args.n_mc_samples, return_mean=False)
            row = {"store": store, "seed": seed, "epochs": args.epochs, "train_seconds": seconds,
                   "heldout_log_px": float(np.mean(np.asarray(per_cell)))}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    _write_quality(rows, args)
    return rows


def _write_quality(rows: list[dict], args: argparse.Namespace) -> None:
    by = {(r["store"], r["seed"]): r["heldout_log_px"] for r in rows}
    diffs = np.array([by[("soma", s)] - by[("memory", s)] for s in args.seeds])
    memory = np.array([by[("memory", s)] for s in args.seeds])
    soma = np.array([by[("soma", s)] for s in args.seeds])
    lines = [
        "# A model trained from disk against one trained in memory: held-out log p(x)",
        "",
        f"Command: `{command_line('benchmarks.atlas.measure', None)}`",
        "",
        f"MixSCVI S = 5 on the {args.quality_cells:,}-cell atlas, {args.epochs} epochs "
        f"(KL warm-up {args.epochs // 2 or 'none'}), batch {args.batch_size}, seeds {args.seeds}; "
        f"log p(x) per cell on 5,000 held-out cells, {args.n_mc_samples} importance samples. "
        f"Machine: {machine_description()}.",
        "",
        "| store | held-out log p(x) (mean ± std over seeds) |",
        "|---|---|",
        f"| memory | {memory.mean():.2f} ± {memory.std():.2f} |",
        f"| soma | {soma.mean():.2f} ± {soma.std():.2f} |",
        "",
        f"SOMA minus memory, paired by seed: {diffs.mean():+.2f} ± {diffs.std():.2f} nats "
        f"(per seed: {', '.join(f'{d:+.2f}' for d in diffs)}); the seed spread in memory is "
        f"{memory.std():.2f}.",
    ]
    write_report(args.out / "atlas_quality", rows, lines)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("throughput", "quality", "child"))
    parser.add_argument("--data", type=Path, help="the folder make_data wrote")
    parser.add_argument("--cells", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-steps", type=int, default=300, help="0: one whole epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quality-cells", type=int, default=100_000)
    parser.add_argument("--n-mc-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="atlas_throughput", help="report name (throughput)")
    parser.add_argument("--memory-budgets", type=int, nargs="+", default=[DEFAULT_BUDGET_MIB],
                        help="TileDB read budgets (MiB) for the SOMA store; TileDB's own "
                        "default is 10240")  # fmt: skip
    # one configuration, in its own process (the throughput study runs these)
    parser.add_argument("--store", choices=STORES)
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-budget", type=int, default=DEFAULT_BUDGET_MIB, help="MiB (child)"
    )
    args = parser.parse_args(argv)
    if args.study == "child":
        args.cells = args.cells[0]
        print(json.dumps(run_child(args)))
    elif args.study == "throughput":
        throughput(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
