"""Test NLL against the number of mixture components S for one image architecture.

Every configuration gets the same training budget (epochs, warm-up, data; no early stopping)
and the same total number of importance samples per test image (``--total-samples``, split
evenly over the ``S`` components, so a larger S is not favoured by drawing more). Models are
named as in :mod:`benchmarks._models` (``S1``, ``S5``, ``S50:shared:A1``, ...). Writes
``<stem>.{json,md,png}`` to ``benchmarks/results/`` (default stem
``image_<arch>_<dataset>``); the runs themselves go to ``benchmarks/runs/`` (git-ignored).
``--resume`` continues an interrupted training from its last checkpoint and reuses finished
evaluations with the same importance-sampling budget; a (model, seed) whose run is not on disk
(e.g. trained on another machine) keeps the row of the existing ``<stem>.json`` when its
budget, importance samples and test images agree. With several ``--seeds`` the report adds
each model's difference to the first model, paired by seed.

Usage::

    python -m benchmarks.images.nll_vs_s --arch vanilla --dataset mnist --components 1 2 3 4 5 \
        --epochs 10 --warmup-epochs 5 --total-samples 1000
    python -m benchmarks.images.nll_vs_s --models S1 S5:shared:A1 S50:shared:A1 S200:shared:A1 \
        --epochs 50 --warmup-epochs 10 --total-samples 5000 --test-subset 2000 --resume
    python -m benchmarks.images.nll_vs_s --models S1 S5 --seeds 0 1 2 --epochs 42 \
        --warmup-epochs 10 --total-samples 5000 --test-subset 2000 --resume
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from scmixvae.image.training import ImageTrainConfig, evaluate, train
from scmixvae.io import atomic_path

from .._models import ModelSpec
from .._paired import paired_difference
from .._report import command_line, machine_description, write_report

HERE = Path(__file__).parents[1]  # benchmarks/
MACHINE_FILE = "trained_on.txt"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vanilla")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--models", nargs="+", default=None,
        help="configurations (S1, S5, S50:shared:A1, ...); default: S for each of --components",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--total-samples", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=None, help="images per split")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument(
        "--seeds", "--seed", type=int, nargs="+", default=[0], dest="seeds",
        help="training and evaluation seeds; each (model, seed) is one run",
    )  # fmt: skip
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--stem", default=None, help="results name (default image_<arch>_<data>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--resume", action="store_true", help="continue / reuse finished runs")
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: report the finished runs in --runs and the rows of the existing "
        "report (as --resume keeps them), and list the rest as not run",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [ModelSpec.parse(m) for m in args.models or [f"S{n}" for n in args.components]]
    if not all(spec.has_image_form for spec in specs):
        parser.error("scvi, H<n> and L<n> are single-cell models or options with no image form")

    budget = (
        f"{args.epochs} epochs, KL warm-up {args.warmup_epochs} epochs, Adam 5e-4, batch 100, "
        f"{'all' if args.subset is None else args.subset} training images"
    )
    importance = (
        f"{args.total_samples} per test image in total, split over S components; NLL in nats"
    )
    stem = args.out / (args.stem or f"image_{args.arch}_{args.dataset}")
    reuse = args.resume or args.report_only
    reported = _reported_rows(stem, budget, importance, args.test_subset) if reuse else {}
    rows, not_run = [], []
    for seed in args.seeds:
        for spec in specs:
            name = f"{args.arch}_{args.dataset}_{spec.code.replace(':', '_')}"
            run_dir = args.runs / (name if seed == 0 else f"{name}_seed{seed}")
            if not (run_dir / "training.json").exists() and (spec.code, seed) in reported:
                rows.append(reported[(spec.code, seed)])
                print("kept from the report:", rows[-1], flush=True)
                continue
            config = spec.image_config(
                architecture=args.arch,
                dataset=args.dataset,
                epochs=args.epochs,
                warmup_epochs=args.warmup_epochs,
                patience=args.epochs,
                seed=seed,
                subset=args.subset,
            )
            finished = _finished_run(config, run_dir, args) if reuse else None
            if finished is None and args.report_only:
                not_run.append(f"{spec.code} seed {seed}")
                continue
            summary, result = finished or _train_and_evaluate(config, run_dir, args, seed)
            rows.append(
                {
                    "model": spec.label,
                    "code": spec.code,
                    "S": spec.n_components,
                    "seed": seed,
                    "test_nll_mixture": result["nll_mixture"],
                    "test_nll_per_component": result["nll_per_component"],
                    "negative_bound": result["negative_bound"],
                    "jsd": result["jsd"],
                    "component_usage": result["component_usage"],
                    "epochs": summary["epochs_run"],
                    "seconds_per_epoch": summary["seconds_per_epoch"],
                    "n_test_images": result["n_images"],
                    "samples_per_component": result["n_samples_per_component"],
                    "machine": summary["machine"],
                }
            )
            print(rows[-1], flush=True)

    if not rows:
        parser.error(f"nothing to report: no finished run in {args.runs} and no earlier rows")
    payload = {
        "models": [spec.code for spec in specs],
        "architecture": args.arch,
        "dataset": args.dataset,
        "seeds": args.seeds,
        "budget": budget,
        "importance_samples": importance,
        "machine": "; ".join(dict.fromkeys(r["machine"] for r in rows)),
        "command": command_line("benchmarks.images.nll_vs_s", argv),
        "rows": rows,
        "paired_with_first_model": _paired_with_first(rows, [s.code for s in specs]),
        "not_run": not_run,
    }
    lines = _report_lines(payload, args)
    write_report(stem, payload, lines)
    _plot(rows, stem.with_suffix(".png"), f"{args.arch}, {args.dataset}, {args.epochs} epochs")
    print("\n".join(lines))
    return payload


def _report_lines(payload: dict, args) -> list[str]:
    """The markdown report: one row per (model, seed), then the table paired by seed."""
    rows, not_run = payload["rows"], payload["not_run"]
    n_test = rows[0]["n_test_images"] if rows else 0
    lines = [
        f"# {args.arch} mixture VAE on {args.dataset}: test NLL vs S",
        "",
        f"Budget: {payload['budget']}. Importance samples: {payload['importance_samples']} "
        f"(`K = total / S` per component), on {n_test} test images. NLL estimators: "
        "'mixture' = -log of the mean of all importance weights (the tight one, default); "
        "'per-component' = -mean over components of each one's log-mean-exp (the method's "
        f"reference code). Machine: {payload['machine']}. Command: `{payload['command']}`.",
        "",
        "| model | seed | test NLL (mixture, tight) | test NLL (per-component) | -bound | JSD | "
        "K / comp | epochs | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['seed']} | {r['test_nll_mixture']:.2f} | "
        f"{r['test_nll_per_component']:.2f} | {r['negative_bound']:.2f} | {r['jsd']:.3f} | "
        f"{r['samples_per_component']} | {r['epochs']} | {r['seconds_per_epoch']:.1f} |"
        for r in rows
    ]
    if not_run:
        lines += ["", f"Not run (nothing on disk or in the earlier report): {', '.join(not_run)}."]
    if payload["paired_with_first_model"]:
        first = rows[0]["model"]
        lines += [
            "",
            f"Test NLL (mixture) over seeds, and each model minus {first} at the same seed "
            "(mean ± std over the seeds both have; negative = better; p: two-sided paired "
            "t-test, scipy's `ttest_rel`).",
            "",
            f"| model | seeds | test NLL | minus {first} | seeds lower | p |",
            "|---|---|---|---|---|---|",
        ]
        for p in payload["paired_with_first_model"]:
            spread = p["n_seeds"] > 1
            versus = "–"
            if p["minus_first"] is not None:
                versus = f"{p['minus_first']:+.2f}"
                versus += f" ± {p['minus_first_std']:.2f}" if spread else ""
            lines.append(
                f"| {p['model']} | {p['n_seeds']} | {p['nll_mean']:.2f}"
                + (f" ± {p['nll_std']:.2f}" if spread else "")
                + f" | {versus} | {p['seeds_lower'] or '–'} | "
                f"{'–' if p['p'] is None else format(p['p'], '.3f')} |"
            )
    return lines


def _plot(rows: list[dict], path: Path, title: str) -> None:
    """Test NLL (both estimators) and -MISELBO against S: mean ± std over seeds."""
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    means = _mean_over_seeds(rows)
    s_values = [m["S"] for m in means]
    for key, style, label in (
        ("test_nll_mixture", "o-", "IS, mixture (tight)"),
        ("test_nll_per_component", "s--", "IS, per-component"),
        ("negative_bound", "^:", "-MISELBO"),
    ):
        ax.errorbar(s_values, [m[key] for m in means], yerr=[m[f"{key}_std"] for m in means],
                    fmt=style, label=label, capsize=2)  # fmt: skip
    for m in means:
        ax.annotate(m["model"], (m["S"], m["test_nll_mixture"]), fontsize=6)
    ax.set_xlabel("mixture components S")
    ax.set_ylabel("test NLL (nats)")
    if max(s_values) > 10:
        ax.set_xscale("log")
    else:
        ax.set_xticks(s_values)
    seeds_per_model = {
        code: sum(r["code"] == code for r in rows) for code in {r["code"] for r in rows}
    }
    n_seeds = max(seeds_per_model.values())
    up_to = "up to " if min(seeds_per_model.values()) < n_seeds else ""
    ax.set_title(
        title + (f", mean ± std of {up_to}{n_seeds} seeds" if n_seeds > 1 else ""), fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def _reported_rows(
    stem: Path, budget: str, importance: str, test_subset: int | None
) -> dict[tuple[str, int], dict]:
    """Rows of an existing report made with the same budget and evaluation, by (code, seed).

    Reports written before ``--seeds`` existed ran seed 0 only and give each row that seed;
    rows without a ``machine`` take the report's.
    """
    path = stem.with_suffix(".json")
    if not path.exists():
        return {}
    payload = json.loads(path.read_text())
    if (payload.get("budget"), payload.get("importance_samples")) != (budget, importance):
        return {}
    kept = {}
    for row in payload["rows"]:
        if test_subset is not None and row["n_test_images"] != test_subset:
            continue
        row = {"seed": 0, "machine": payload.get("machine", "unknown"), **row}
        kept[(row["code"], row["seed"])] = row
    return kept


def _mean_over_seeds(rows: list[dict]) -> list[dict]:
    """Per model (in order of first appearance): the mean and std over seeds of each NLL."""
    out = []
    for code in dict.fromkeys(r["code"] for r in rows):
        own = [r for r in rows if r["code"] == code]
        record = {"model": own[0]["model"], "code": code, "S": own[0]["S"]}
        for key in ("test_nll_mixture", "test_nll_per_component", "negative_bound"):
            values = np.array([r[key] for r in own])
            record[key], record[f"{key}_std"] = float(values.mean()), float(values.std())
        out.append(record)
    return out


def _paired_with_first(rows: list[dict], codes: list[str]) -> list[dict]:
    """Each model's test NLL over seeds and its difference to the first model, seed by seed.

    Empty when no model has two seeds. A difference is taken only over seeds both models ran;
    ``p`` is the two-sided paired t-test over them (``None`` below three seeds).
    """
    nll = {(r["code"], r["seed"]): r["test_nll_mixture"] for r in rows}
    if max((sum(c == code for c, _ in nll) for code in codes), default=0) < 2:
        return []
    label = {r["code"]: r["model"] for r in rows}
    first = codes[0]
    out = []
    for code in codes:
        seeds = sorted(s for c, s in nll if c == code)
        if not seeds:
            continue
        values = np.array([nll[(code, s)] for s in seeds])
        record = {"model": label[code], "code": code, "n_seeds": len(seeds),
                  "nll_mean": float(values.mean()), "nll_std": float(values.std()),
                  "minus_first": None, "minus_first_std": None, "seeds_lower": None,
                  "p": None}  # fmt: skip
        both = [s for s in seeds if (first, s) in nll]
        if code != first and both:
            own, other = [nll[(code, s)] for s in both], [nll[(first, s)] for s in both]
            paired = paired_difference(own, other, lower_better=True)
            record.update(
                minus_first=paired["minus"],
                minus_first_std=paired["minus_std"],
                seeds_lower=paired["better"],
                p=paired["p"] if len(both) > 2 else None,
            )
        out.append(record)
    return out


def _finished_run(config: ImageTrainConfig, run_dir: Path, args) -> tuple[dict, dict] | None:
    """A run's training summary and evaluation, if it was trained and evaluated as asked."""
    done, evaluation = run_dir / "training.json", run_dir / "evaluation.json"
    if not (done.exists() and evaluation.exists()):
        return None
    summary, result = json.loads(done.read_text()), json.loads(evaluation.read_text())
    same = (
        summary["config"]["epochs"] == config.epochs
        and result["n_samples_per_component"] == _samples_per_component(config, args)
        and result["n_images"] == (args.test_subset or result["n_images"])
        and result["training"]["epochs_run"] == summary["epochs_run"]
    )
    return (_with_machine(summary, run_dir), result) if same else None


def _with_machine(summary: dict, run_dir: Path) -> dict:
    """The summary with the machine the run trained on (this one for runs made before the
    record existed)."""
    machine_file = run_dir / MACHINE_FILE
    machine = machine_file.read_text() if machine_file.exists() else machine_description()
    return {**summary, "machine": machine}


def _train_and_evaluate(
    config: ImageTrainConfig, run_dir: Path, args, seed: int
) -> tuple[dict, dict]:
    """Train (or, with ``--resume``, continue / reuse) and evaluate one configuration."""
    done = run_dir / "training.json"
    if (
        args.resume
        and done.exists()
        and json.loads(done.read_text())["config"]["epochs"] == (config.epochs)
    ):
        summary = json.loads(done.read_text())
    else:
        resumable = args.resume and (run_dir / "checkpoints" / "last.ckpt").exists()
        summary = train(config, run_dir, progress_bar=False, overwrite=True, resume=resumable)
        # the run may be evaluated or reported later on another machine (GPU runs, CPU report)
        with atomic_path(run_dir / MACHINE_FILE) as tmp:
            tmp.write_text(machine_description())
    summary = _with_machine(summary, run_dir)
    samples = _samples_per_component(config, args)
    return summary, evaluate(run_dir, samples, subset=args.test_subset, seed=seed)


def _samples_per_component(config: ImageTrainConfig, args) -> int:
    """``--total-samples`` split evenly over the S components (at least one each)."""
    return max(1, args.total_samples // config.n_components)


if __name__ == "__main__":
    main()
