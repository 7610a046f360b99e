"""Test NLL against the number of mixture components S for one image architecture.

Every S gets the same training budget (epochs, warm-up, data) and the same total number of
importance samples per test image (``--total-samples``, split evenly over the components, so a
larger S is not favoured by drawing more). Writes ``image_<arch>_<dataset>.{json,md,png}`` to
``benchmarks/results/``; the runs themselves go to ``benchmarks/runs/`` (git-ignored).

Usage::

    python -m benchmarks.image_nll_vs_s --arch vanilla --dataset mnist --components 1 2 3 4 5 \
        --epochs 10 --warmup-epochs 5 --total-samples 1000
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from scmixvae.image.training import ImageTrainConfig, evaluate, train
from scmixvae.io import atomic_path

from ._report import write_report

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vanilla")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--total-samples", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=None, help="images per split")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    rows = []
    for n_components in args.components:
        run_dir = args.runs / f"{args.arch}_{args.dataset}_S{n_components}"
        config = ImageTrainConfig(
            architecture=args.arch,
            dataset=args.dataset,
            n_components=n_components,
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            patience=args.epochs,
            seed=args.seed,
            subset=args.subset,
        )
        summary = train(config, run_dir, progress_bar=False, overwrite=True)
        result = evaluate(
            run_dir,
            n_samples_per_component=max(1, args.total_samples // n_components),
            subset=args.test_subset,
            seed=args.seed,
        )
        rows.append(
            {
                "S": n_components,
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
        "architecture": args.arch,
        "dataset": args.dataset,
        "budget": f"{args.epochs} epochs, KL warm-up {args.warmup_epochs} epochs, Adam 5e-4, "
        f"batch 100, {'all' if args.subset is None else args.subset} training images",
        "importance_samples": f"{args.total_samples} per test image in total, split over S "
        "components; NLL in nats",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "command": "python -m benchmarks.image_nll_vs_s " + " ".join(argv or []),
        "rows": rows,
    }
    stem = args.out / f"image_{args.arch}_{args.dataset}"
    lines = [
        f"# {args.arch} mixture VAE on {args.dataset}: test NLL vs S",
        "",
        f"Budget: {payload['budget']}. Importance samples: {payload['importance_samples']}. "
        f"Machine: {payload['machine']}.",
        "",
        "| S | test NLL (mixture, tight) | test NLL (per-component) | -bound | JSD | s / epoch |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['S']} | {r['test_nll_mixture']:.2f} | {r['test_nll_per_component']:.2f} | "
        f"{r['negative_bound']:.2f} | {r['jsd']:.3f} | {r['seconds_per_epoch']:.1f} |"
        for r in rows
    ]
    write_report(stem, payload, lines)

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    s_values = [r["S"] for r in rows]
    ax.plot(s_values, [r["test_nll_mixture"] for r in rows], "o-", label="IS, mixture (tight)")
    ax.plot(
        s_values, [r["test_nll_per_component"] for r in rows], "s--", label="IS, per-component"
    )
    ax.plot(s_values, [r["negative_bound"] for r in rows], "^:", label="-MISELBO")
    ax.set_xlabel("mixture components S")
    ax.set_ylabel("test NLL (nats)")
    ax.set_xticks(s_values)
    ax.set_title(f"{args.arch}, {args.dataset}, {args.epochs} epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
