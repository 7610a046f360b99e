"""Which cookbook recipe pays for counts: the recipe table of issue 33, from the converged runs.

The runs themselves are :mod:`benchmarks.singlecell`'s converged protocol (800 epochs, early
stopping with patience 100, KL warm-up over 20 epochs, held-out log p(x) from 1000 importance
samples with each model's own prior), written to ``benchmarks/results/cookbook/`` by
``benchmarks/cookbook/run.sh``. This script reads every finished row there (the reports and the
progress logs of runs still going) and writes, per dataset and recipe, paired by seed:

* held-out log p(x) against SCVI and against ``SCVI(n_layers=2)`` (the bar to beat);
* leiden NMI and KMeans NMI of the posterior mean against SCVI (biology);
* the mixture's own share: each recipe at S = 5 against the same recipe at S = 1;

with the paired t-test and Holm's correction over each column's family of tests per dataset.
Writes ``benchmarks/results/cookbook/summary.{md,json}`` and ``summary.png``.

Usage::

    python -m benchmarks.cookbook [--datasets mouse_bladder sorted_pbmc worm_neuron]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .._models import REFERENCE, ModelSpec
from .._paired import holm, paired_difference
from .._report import write_report

OUT = Path(__file__).parents[1] / "results" / "cookbook"
# the screen's models (benchmarks/cookbook/run.sh); earlier rows of other models in the reused
# reports are left out of the table
MODELS = ["scvi", "scvi:L2", "S1", "S5", "S5:L2", "S1:vamp", "S5:vamp", "S1:mog", "S5:mog",
          "S1:F2", "S5:F2", "S1:vamp:F2", "S5:vamp:F2", "S1:L2:vamp", "S5:L2:vamp",
          "S1:L2:vamp:F2", "S5:shared:A1:vamp", "S1:vamp20", "S1:vamp100",
          "S1:vamp300", "S5:vamp20", "S5:vamp300"]  # fmt: skip
DEEPER = "SCVI(n_layers=2)"
# (column, metric, the model each recipe is paired with)
COMPARISONS = [
    ("ll_vs_scvi", "heldout_marginal_ll", REFERENCE),
    ("ll_vs_scvi_l2", "heldout_marginal_ll", DEEPER),
    ("leiden_nmi_vs_scvi", "leiden_nmi_mean", REFERENCE),
    ("kmeans_nmi_vs_scvi", "kmeans_nmi_mean", REFERENCE),
]


def finished_rows(folder: Path, dataset: str) -> list[dict]:
    """Every finished row of ``dataset`` in ``folder``: the report's, then the progress logs'."""
    rows: dict[tuple[str, int], dict] = {}
    report = folder / f"singlecell_{dataset}.json"
    if report.exists():
        payload = json.loads(report.read_text())
        for row in payload["rows"] + payload.get("unreported_rows", []):
            rows[(row["model"], row["seed"])] = row
    for log in sorted((folder / ".progress").glob(f"singlecell_{dataset}_*.jsonl")):
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["model"], row["seed"])] = row
    return list(rows.values())


def _by_seed(rows: list[dict], model: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if r["model"] == model and metric in r}


def compare(rows: list[dict], codes: list[str]) -> list[dict]:
    """One line per model of ``codes`` with rows: its metrics and the paired comparisons, Holm
    over each column."""
    names = {ModelSpec.parse(c).name for c in codes}
    models = sorted(
        {(r["code"], r["model"]) for r in rows if r["model"] in names}, key=lambda m: _order(m[0])
    )
    lines = []
    for code, name in models:
        ll = _by_seed(rows, name, "heldout_marginal_ll")
        values = list(ll.values()) or [np.nan]
        runs = [r for r in rows if r["model"] == name and "epochs" in r]
        stopped = sum(r["stopped_early"] for r in runs)
        line = {"code": code, "model": name, "n_seeds": len(ll),
                "heldout_marginal_ll": float(np.mean(values)),
                "heldout_marginal_ll_std": float(np.std(values)),
                "epochs": float(np.mean([r["epochs"] for r in runs])) if runs else np.nan,
                "stopped_early": f"{stopped}/{len(runs)}"}  # fmt: skip
        for column, metric, other in COMPARISONS:
            line[column] = _paired(rows, name, other, metric)
        line["s5_vs_s1"] = _mixture_share(rows, code)
        lines.append(line)
    for column in [c for c, _, _ in COMPARISONS] + ["s5_vs_s1"]:
        tested = [ln[column] for ln in lines if ln[column] and np.isfinite(ln[column]["p"])]
        for result, adjusted in zip(tested, holm([t["p"] for t in tested]), strict=True):
            result["holm"] = float(adjusted)
    return lines


def _paired(rows, name: str, other: str, metric: str) -> dict | None:
    own, base = _by_seed(rows, name, metric), _by_seed(rows, other, metric)
    seeds = sorted(set(own) & set(base))
    if name in (other, REFERENCE) or len(seeds) < 2:  # SCVI is the baseline of both
        return None
    return paired_difference([own[s] for s in seeds], [base[s] for s in seeds])


def _mixture_share(rows, code: str) -> dict | None:
    """The same recipe at S = 5 against S = 1 (scVI's depth and width, same prior and flow)."""
    spec = ModelSpec.parse(code)
    if spec.kind == "scvi" or spec.n_components != 5 or spec.shared_encoder:
        return None
    single = ModelSpec.parse(":".join(["S1", *code.split(":")[1:]])).name
    return _paired(rows, spec.name, single, "heldout_marginal_ll")


def _order(code: str) -> tuple:
    spec = ModelSpec.parse(code)
    recipe = (spec.prior != "standard_normal", spec.prior, spec.flow_steps)
    return (spec.kind != "scvi", spec.n_layers, *recipe, spec.n_components, spec.shared_encoder,
            code)  # fmt: skip


def _cell(result: dict | None, digits: int = 2) -> str:
    if not result:
        return "–"
    p = result["p"]
    test = "" if not np.isfinite(p) else f", p {p:.2g}, Holm {result.get('holm', np.nan):.2g}"
    return (
        f"{result['minus']:+.{digits}f} ± {result['minus_std']:.{digits}f} "
        f"({result['better']}{test})"
    )


def markdown(dataset: str, lines: list[dict], command: str) -> list[str]:
    out = [
        f"### {dataset}",
        "",
        "Held-out log p(x) per cell (mean ± std over seeds); differences paired by seed "
        "(mean ± std of the differences, seeds where the model is better, paired t-test p, "
        "Holm over the column's tests on this dataset). NMI: of the posterior mean, leiden "
        "and KMeans, against the labels of the test cells. Epochs: mean epochs trained; "
        "stopped: runs that early stopping ended before the 800-epoch limit.",
        "",
        "| model | seeds | epochs (stopped) | held-out log p(x) | vs SCVI | vs SCVI(n_layers=2) "
        "| leiden NMI vs SCVI | KMeans NMI vs SCVI | S = 5 vs S = 1, same recipe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ln in lines:
        out.append(
            f"| {ln['model']} | {ln['n_seeds']} | {ln['epochs']:.0f} ({ln['stopped_early']}) | "
            f"{ln['heldout_marginal_ll']:.2f} ± "
            f"{ln['heldout_marginal_ll_std']:.2f} | {_cell(ln['ll_vs_scvi'])} | "
            f"{_cell(ln['ll_vs_scvi_l2'])} | {_cell(ln['leiden_nmi_vs_scvi'], 3)} | "
            f"{_cell(ln['kmeans_nmi_vs_scvi'], 3)} | {_cell(ln['s5_vs_s1'])} |"
        )
    return [*out, "", f"Command: `{command}`", ""]


def plot(results: dict[str, list[dict]], rows: dict[str, list[dict]], path: Path) -> None:
    """Held-out log p(x) minus SCVI(n_layers=2)'s, per seed, for every model and dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    for ax, (dataset, lines) in zip(axes[0], results.items(), strict=True):
        deeper = _by_seed(rows[dataset], DEEPER, "heldout_marginal_ll")
        for i, ln in enumerate(lines):
            own = _by_seed(rows[dataset], ln["model"], "heldout_marginal_ll")
            diffs = [own[s] - deeper[s] for s in sorted(set(own) & set(deeper))]
            ax.scatter([i] * len(diffs), diffs, s=14, color="tab:blue")
            if diffs:
                ax.plot([i - 0.3, i + 0.3], [np.mean(diffs)] * 2, color="black")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(lines)), [ln["model"] for ln in lines], rotation=75, fontsize=7)
        ax.set_title(dataset)
    axes[0][0].set_ylabel("held-out log p(x) − SCVI(n_layers=2)\n(nats per cell, by seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["mouse_bladder", "sorted_pbmc", "worm_neuron"]
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = {d: finished_rows(args.out, d) for d in args.datasets}
    rows = {d: r for d, r in rows.items() if any(x["model"] == REFERENCE for x in r)}
    if not rows:
        raise FileNotFoundError(f"no finished runs with SCVI in {args.out}")
    results = {d: compare(r, args.models) for d, r in rows.items()}
    command = "python -m benchmarks.cookbook --datasets " + " ".join(rows)
    if args.models != MODELS:
        command += " --models " + " ".join(args.models)
    # no top-level title: the documentation includes this file under its own headings
    lines = ["**Which cookbook recipe pays for counts** (`benchmarks/cookbook/summary.py`)", ""]
    for dataset, table in results.items():
        lines += markdown(dataset, table, command)
    write_report(args.out / "summary", results, lines)
    plot(results, rows, args.out / "summary.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
