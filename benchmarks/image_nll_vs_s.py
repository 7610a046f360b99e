"""Test NLL against the number of mixture components S for one image architecture.

Every configuration gets the same training budget (epochs, warm-up, data; no early stopping)
and the same total number of importance samples per test image (``--total-samples``, split
evenly over the ``S`` components, so a larger S is not favoured by drawing more). Models are
named as in :mod:`benchmarks._models` (``S1``, ``S5``, ``S50:shared:A1``, ...). Writes
``<stem>.{json,md,png}`` to ``benchmarks/results/`` (default stem
``image_<arch>_<dataset>``); the runs themselves go to ``benchmarks/runs/`` (git-ignored).
``--resume`` continues an interrupted training from its last checkpoint and reuses finished
evaluations with the same importance-sampling budget.

Usage::

    python -m benchmarks.image_nll_vs_s --arch vanilla --dataset mnist --components 1 2 3 4 5 \
        --epochs 10 --warmup-epochs 5 --total-samples 1000
    python -m benchmarks.image_nll_vs_s --models S1 S5:shared:A1 S50:shared:A1 S200:shared:A1 \
        --epochs 50 --warmup-epochs 10 --total-samples 5000 --test-subset 2000 --resume
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from scmixvae.image.training import ImageTrainConfig, evaluate, train
from scmixvae.io import atomic_path

from ._models import ModelSpec
from ._report import command_line, machine_description, write_report

HERE = Path(__file__).parent


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--stem", default=None, help="results name (default image_<arch>_<data>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--resume", action="store_true", help="continue / reuse finished runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [ModelSpec.parse(m) for m in args.models or [f"S{n}" for n in args.components]]
    if not all(spec.has_image_form for spec in specs):
        parser.error("scvi, H<n> and L<n> are single-cell models or options with no image form")

    rows = []
    for spec in specs:
        run_dir = args.runs / f"{args.arch}_{args.dataset}_{spec.code.replace(':', '_')}"
        config = ImageTrainConfig(
            architecture=args.arch,
            dataset=args.dataset,
            n_components=spec.n_components,
            objective=spec.objective,
            shared_encoder=spec.shared_encoder,
            n_sampled_components=spec.n_sampled_components,
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            patience=args.epochs,
            seed=args.seed,
            subset=args.subset,
        )
        summary, result = _train_and_evaluate(config, run_dir, args)
        rows.append(
            {
                "model": spec.label,
                "code": spec.code,
                "S": spec.n_components,
                "test_nll_mixture": result["nll_mixture"],
                "test_nll_per_component": result["nll_per_component"],
                "negative_bound": result["negative_bound"],
                "jsd": result["jsd"],
                "component_usage": result["component_usage"],
                "epochs": summary["epochs_run"],
                "seconds_per_epoch": summary["seconds_per_epoch"],
                "n_test_images": result["n_images"],
                "samples_per_component": result["n_samples_per_component"],
            }
        )
        print(rows[-1], flush=True)

    payload = {
        "models": [spec.code for spec in specs],
        "architecture": args.arch,
        "dataset": args.dataset,
        "budget": f"{args.epochs} epochs, KL warm-up {args.warmup_epochs} epochs, Adam 5e-4, "
        f"batch 100, {'all' if args.subset is None else args.subset} training images",
        "importance_samples": f"{args.total_samples} per test image in total, split over S "
        "components; NLL in nats",
        "machine": machine_description(),
        "command": command_line("benchmarks.image_nll_vs_s", argv),
        "rows": rows,
    }
    stem = args.out / (args.stem or f"image_{args.arch}_{args.dataset}")
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
        "| model | test NLL (mixture, tight) | test NLL (per-component) | -bound | JSD | "
        "K / comp | epochs | s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['test_nll_mixture']:.2f} | {r['test_nll_per_component']:.2f} | "
        f"{r['negative_bound']:.2f} | {r['jsd']:.3f} | {r['samples_per_component']} | "
        f"{r['epochs']} | {r['seconds_per_epoch']:.1f} |"
        for r in rows
    ]
    write_report(stem, payload, lines)

    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    s_values = [r["S"] for r in rows]
    ax.plot(s_values, [r["test_nll_mixture"] for r in rows], "o-", label="IS, mixture (tight)")
    ax.plot(
        s_values, [r["test_nll_per_component"] for r in rows], "s--", label="IS, per-component"
    )
    ax.plot(s_values, [r["negative_bound"] for r in rows], "^:", label="-MISELBO")
    for r in rows:
        ax.annotate(r["model"], (r["S"], r["test_nll_mixture"]), fontsize=6)
    ax.set_xlabel("mixture components S")
    ax.set_ylabel("test NLL (nats)")
    if max(s_values) > 10:
        ax.set_xscale("log")
    else:
        ax.set_xticks(s_values)
    ax.set_title(f"{args.arch}, {args.dataset}, {args.epochs} epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
    print("\n".join(lines))
    return payload


def _train_and_evaluate(config: ImageTrainConfig, run_dir: Path, args) -> tuple[dict, dict]:
    """Train (or, with ``--resume``, continue / reuse) and evaluate one configuration."""
    import json

    samples = max(1, args.total_samples // config.n_components)
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
    evaluation = run_dir / "evaluation.json"
    if args.resume and evaluation.exists():
        result = json.loads(evaluation.read_text())
        same = (result["n_samples_per_component"], result["n_images"]) == (
            samples,
            args.test_subset or result["n_images"],
        ) and result["training"]["epochs_run"] == summary["epochs_run"]
        if same:
            return summary, result
    return summary, evaluate(run_dir, samples, subset=args.test_subset, seed=args.seed)


if __name__ == "__main__":
    main()
