"""The label-transfer benchmark's report: tables, paired tests against SCANVI, reliability."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scmixvae.io import atomic_path

from .._paired import holm, paired_difference

REFERENCE = "SCANVI"
# (column, lower is better) of the tables; the paired tests use the same list
KNOWN_METRICS = [("accuracy", False), ("macro_f1", False), ("ece", True), ("brier", True),
                 ("nll", True), ("error_auroc[1-confidence]", False), ("accuracy_at_90", False),
                 ("known_flagged", True)]  # fmt: skip
UNSEEN_METRICS = [("unseen_auroc[1-confidence]", False), ("unseen_auroc[entropy]", False),
                  ("unseen_auroc[disagreement]", False), ("unseen_flagged", False)]  # fmt: skip
TASK_TITLES = {
    "A": "Task A: known types (the query holds only types the reference has)",
    "B_largest": "Task B: unseen type, the largest type removed from the reference",
    "B_small": "Task B: unseen type, a small type (at least 30 cells) removed from the reference",
}


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def summary_table(frame: pd.DataFrame, metrics: list[tuple[str, bool]]) -> list[str]:
    present = [m for m, _ in metrics if m in frame]
    lines = ["| method | seeds | " + " | ".join(present) + " |",
             "|---|---|" + "---|" * len(present)]  # fmt: skip
    for method, group in frame.groupby("method", sort=False):
        cells = [_cell(group[m]) for m in present]
        lines.append(f"| {method} | {group['seed'].nunique()} | " + " | ".join(cells) + " |")
    return lines


def time_table(frame: pd.DataFrame) -> list[str]:
    """Training and prediction time of each SCANVI route against SCANVI's, paired by seed."""
    routes = frame[frame["method"].str.contains("SCANVI") & ~frame["method"].str.contains("draws")]
    if REFERENCE not in set(routes["method"]):
        return []
    total = routes["reference_s"] + routes["scanvi_s"]
    routes = routes.assign(train_s=total)
    base = routes[routes["method"] == REFERENCE].set_index("seed")
    lines = ["| method | reference + SCANVI training (s) | x SCANVI | query mapping (s) | "
             "x SCANVI | prediction (s) | x SCANVI |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, group in routes.groupby("method", sort=False):
        group = group.set_index("seed")
        seeds = group.index.intersection(base.index)
        ratio = {c: (group.loc[seeds, c] / base.loc[seeds, c]).mean()
                 for c in ("train_s", "scanvi_query_s", "predict_s")}  # fmt: skip
        lines.append(f"| {method} | {group['train_s'].mean():.0f} | {ratio['train_s']:.2f} | "
                     f"{group['scanvi_query_s'].mean():.0f} | {ratio['scanvi_query_s']:.2f} | "
                     f"{group['predict_s'].mean():.2f} | {ratio['predict_s']:.2f} |")  # fmt: skip
    return lines


def paired_tests(frame: pd.DataFrame, metrics: list[tuple[str, bool]]) -> pd.DataFrame:
    """Each method against SCANVI, seed by seed: mean difference, seeds better, paired t-test's
    p, and Holm's adjustment over every test of the table."""
    records = []
    base = frame[frame["method"] == REFERENCE].set_index("seed")
    for method, group in frame.groupby("method", sort=False):
        if method == REFERENCE:
            continue
        group = group.set_index("seed")
        seeds = group.index.intersection(base.index)
        for metric, lower_better in metrics:
            if metric not in group or metric not in base:
                continue
            own, other = group.loc[seeds, metric].astype(float), base.loc[seeds, metric]
            keep = np.isfinite(own) & np.isfinite(other.astype(float))
            if keep.sum() < 2:
                continue
            test = paired_difference(own[keep], other[keep].astype(float), lower_better)
            records.append({"method": method, "metric": metric, "n_seeds": test["n_seeds"],
                            "minus_scanvi": test["minus"], "better": test["better"],
                            "p": test["p"]})  # fmt: skip
    tests = pd.DataFrame.from_records(records)
    if not tests.empty:
        finite = tests["p"].notna()
        tests["p_holm"] = np.nan
        tests.loc[finite, "p_holm"] = holm(tests.loc[finite, "p"].to_numpy())
    return tests


def test_lines(tests: pd.DataFrame) -> list[str]:
    if tests.empty:
        return ["(fewer than two seeds paired with SCANVI: no tests yet)"]
    lines = ["| method | metric | seeds | minus SCANVI | better | p | p (Holm) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in tests.itertuples():
        lines.append(f"| {r.method} | {r.metric} | {r.n_seeds} | {r.minus_scanvi:+.3f} | "
                     f"{r.better} | {r.p:.3g} | {r.p_holm:.3g} |")  # fmt: skip
    return lines


def reliability_plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Accuracy against confidence on the query's known types, pooled over seeds."""
    methods = [m for m in frame["method"].unique() if "kNN" not in m or "SCVI + kNN" == m]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    ax[0].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for method in methods:
        tables = [pd.DataFrame(t) for t in frame.loc[frame["method"] == method, "reliability"]]
        pooled = pd.concat(tables)
        pooled = pooled[pooled["n"] > 0]
        pooled = pooled.assign(
            c=pooled["confidence"] * pooled["n"], a=pooled["accuracy"] * pooled["n"]
        )
        by_bin = pooled.groupby("low")[["c", "a", "n"]].sum()
        ax[0].plot(by_bin["c"] / by_bin["n"], by_bin["a"] / by_bin["n"], marker="o", ms=3,
                   label=method)  # fmt: skip
    ax[0].set(xlabel="confidence", ylabel="accuracy", title="reliability (query, known types)")
    ax[0].legend(fontsize=7)
    ece = frame.groupby("method", sort=False)["ece"].agg(["mean", "std"])
    ax[1].barh(ece.index, ece["mean"], xerr=ece["std"].fillna(0), color="tab:blue")
    ax[1].set(xlabel="expected calibration error (15 bins)", title="ECE, mean ± sd over seeds")
    ax[1].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_dataset_report(dataset: str, rows: list[dict], out: Path, command: str) -> dict:
    """Write ``label_transfer_<dataset>.md`` (and the task A ``.png``); return the tests."""
    frame = pd.DataFrame.from_records(rows)
    lines = [f"# Label transfer on {dataset}", "", f"Command: `{command}`", "",
             "Every number: query cells (a simulated technical batch) mapped onto a reference "
             "with scArches; mean ± sd over seeds. Calibration and error detection on the "
             "query's known types. Uncertainty for the AUROCs and the unknown flag: 1 − the "
             "predicted label's probability, unless named. The unknown threshold is chosen on "
             "held-out reference cells for a 5 % error rate. See "
             "benchmarks/label_transfer/protocol.py.",
             ""]  # fmt: skip
    payload = {"dataset": dataset, "command": command, "tasks": {}}
    for task, group in frame.groupby("task", sort=False):
        metrics = KNOWN_METRICS + (UNSEEN_METRICS if task != "A" else [])
        unseen = ", ".join(sorted({str(u) for u in group["unseen"].dropna()}))
        lines += [f"## {TASK_TITLES.get(task, task)}", ""]
        if unseen:
            lines += [f"Unseen type: {unseen}.", ""]
        lines += [*summary_table(group, metrics), ""]
        lines += ["Time (2 CPU cores unless the machine says otherwise):", ""]
        lines += [*time_table(group), ""]
        tests = paired_tests(group, metrics)
        lines += ["Paired by seed against SCANVI (two-sided paired t-test, Holm over this "
                  "table):", "", *test_lines(tests), ""]  # fmt: skip
        payload["tasks"][task] = {"tests": tests.to_dict("records")}
        if task == "A":
            reliability_plot(group, out / f"label_transfer_{dataset}.png",
                             f"{dataset}: task A")  # fmt: skip
    with atomic_path(out / f"label_transfer_{dataset}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return payload


# the goals, checked per dataset and task: (what, MixSCANVI's metric, SCANVI's, goal)
def _summary_methods(frame: pd.DataFrame) -> list[str]:
    """SCANVI, every MixSCANVI configuration, the kNN routes and the logistic regression (the
    averages over draws are in the per-dataset reports)."""
    methods = [m for m in frame["method"].unique() if "draws" not in m]
    order = ("SCANVI", "MixSCANVI", "SCVI + kNN", "MixSCVI", "logistic")
    return sorted(methods, key=lambda m: next(i for i, p in enumerate(order) if m.startswith(p)))


SUMMARY_COLUMNS = [("accuracy", "accuracy"), ("ece", "ECE"),
                   ("error_auroc[1-confidence]", "error AUROC"),
                   ("unseen_auroc[1-confidence]", "unseen AUROC (1 − confidence)"),
                   ("unseen_auroc[entropy]", "unseen AUROC (entropy)"),
                   ("unseen_flagged", "unseen flagged")]  # fmt: skip


def summary_lines(frames: dict[str, pd.DataFrame]) -> list[str]:
    """One table over datasets and tasks (mean ± sd over seeds) and the goals of the
    label-transfer issue checked against SCANVI, seed-paired where both ran."""
    lines = ["| dataset | task | method | seeds | "
             + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |",
             "|---|---|---|---|" + "---|" * len(SUMMARY_COLUMNS)]  # fmt: skip
    goals = ["| dataset | task | MixSCANVI | ECE Mix / SCANVI (goal ≤ 0.5) | accuracy Mix − "
             "SCANVI (goal ≥ −0.01) | unseen AUROC Mix − SCANVI, best of the two scores each "
             "(goal ≥ +0.05) | training time Mix / SCANVI, task A (goal ≤ 1.3) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset, frame in frames.items():
        for task, group in frame.groupby("task", sort=False):
            for method in _summary_methods(group):
                mine = group[group["method"] == method]
                if mine.empty:
                    continue
                cells = [_cell(mine[c]) if c in mine else "–" for c, _ in SUMMARY_COLUMNS]
                lines.append(f"| {dataset} | {task} | {method} | {mine['seed'].nunique()} | "
                             + " | ".join(cells) + " |")  # fmt: skip
            mixtures = [m for m in _summary_methods(group) if m.startswith("MixSCANVI")]
            goals += [_goal_row(dataset, task, group, m) for m in mixtures]
    return [*lines, "", "Against the goals (means over the seeds both methods ran). Training "
            "time is the reference model's plus SCANVI's, paired by seed over the runs made "
            "alone: the machine's 1-minute load stayed at most one above the run's own torch "
            "threads while it ran (no other work on the cores). Runs made two at a time, or "
            "before the load was recorded, are not timed here; the per-dataset reports list "
            "their times as run.", "", *goals]  # fmt: skip


def ran_alone(frame: pd.DataFrame) -> pd.Series:
    """Rows whose run had the cores to itself: the peak 1-minute load at most one above its
    torch threads (rows from before the load was recorded count as shared)."""
    if "peak_load" not in frame:
        return pd.Series(False, index=frame.index)
    return (frame["peak_load"] <= frame["torch_threads"] + 1).fillna(False)


def _goal_row(dataset: str, task: str, group: pd.DataFrame, method: str) -> str:
    mix = group[group["method"] == method].set_index("seed")
    base = group[group["method"] == REFERENCE].set_index("seed")
    seeds = mix.index.intersection(base.index)
    if seeds.empty:
        return f"| {dataset} | {task} | {method} | – | – | – | – |"
    mix, base = mix.loc[seeds], base.loc[seeds]

    def best_unseen(frame: pd.DataFrame) -> float:
        scores = [c for c in ("unseen_auroc[1-confidence]", "unseen_auroc[entropy]")
                  if c in frame and frame[c].notna().all()]  # fmt: skip
        return max(frame[c].mean() for c in scores) if scores else float("nan")

    unseen = best_unseen(mix) - best_unseen(base) if task != "A" else float("nan")
    time = (mix["reference_s"] + mix["scanvi_s"]) / (base["reference_s"] + base["scanvi_s"])
    alone = ran_alone(mix) & ran_alone(base)
    if task != "A":
        time_cell = "–"  # task A's runs are the timed ones
    elif alone.any():
        time_cell = f"{time[alone].mean():.1f} (alone, {int(alone.sum())} seeds)"
    else:  # a ratio of a run made alone to one that shared the cores says nothing
        time_cell = "– (not run alone)"
    cells = [f"{mix['ece'].mean() / base['ece'].mean():.2f}",
             f"{mix['accuracy'].mean() - base['accuracy'].mean():+.3f}",
             "–" if np.isnan(unseen) else f"{unseen:+.3f}", time_cell]  # fmt: skip
    return f"| {dataset} | {task} ({len(seeds)} seeds) | {method} | " + " | ".join(cells) + " |"


def write_summary(out: Path, command: str) -> None:
    """``label_transfer_summary.md`` from every ``label_transfer_<dataset>.json`` in ``out``."""
    import json

    frames = {}
    for path in sorted(out.glob("label_transfer_*.json")):
        rows = json.loads(path.read_text())["rows"]
        if rows:
            frames[path.stem.removeprefix("label_transfer_")] = pd.DataFrame.from_records(rows)
    if not frames:
        return
    lines = ["# Label transfer: every dataset and task", "", f"Written by `{command}` from the "
             "per-dataset results beside this file (their commands are in them). Query cells "
             "mapped onto the reference with scArches; mean ± sd over seeds; ECE with 15 bins "
             "on known types; unseen: the type missing from the reference (task B).", "",
             *summary_lines(frames)]  # fmt: skip
    with atomic_path(out / "label_transfer_summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
