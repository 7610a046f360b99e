"""Batch integration, scored with scib-metrics: a simulated technical batch, and Kang ctrl/stim.

Tasks ``sorted_pbmc``, ``mouse_bladder`` and ``worm_neuron`` (labelled; the three datasets of
the single-cell likelihood protocol). The dataset's cells are split at random into two halves
(``--batch-seed``). The second half gets a technical batch effect, made reproducibly from the
same seed with :func:`simulate_technical_batch`:

1. binomial thinning of every count to 50 % depth (``--depth``);
2. per-gene capture efficiencies :math:`e_g = \\min(1, \\exp(\\epsilon_g))`,
   :math:`\\epsilon_g \\sim \\mathcal{N}(0, 0.5^2)` (``--efficiency-sigma``), applied by further
   binomial thinning.

Both thinnings are done in one draw, :math:`\\mathrm{Bin}(n, 0.5\\, e_g)`, which has the same
distribution as the two in turn; the counts stay integers. Bio-conservation and
batch-correction scores come from :class:`scib_metrics.benchmark.Benchmarker`, with the
dataset's cell types (the sorted populations for PBMC) as labels.

Task ``kang_ifnb`` (real, unlabelled). Kang et al. 2018 PBMCs, control and IFN-beta stimulated,
with ``condition`` as the batch. There are no labels, so only batch-mixing scores are reported
(every cell carries one label, so the per-label scores are computed over all cells).
Stimulation is biology, not a technical batch: a method that mixes the two conditions
perfectly has also removed the interferon response.

Methods: PCA of log-normalised counts (no correction), Harmony on that PCA (harmonypy), and the
trained models named as in :mod:`benchmarks._models` (default SCVI, MixSCVI S=5 and a large
shared MixSCVI), each with every seed of ``--seeds``. Trained models use the 2,000 most
variable genes (seurat_v3 with the batch), batch 512, Adam 1e-3, a 20-epoch KL warm-up and
early stopping on a 10 % validation split (patience 20, at most ``--max-epochs``).

Writes ``benchmarks/results/integration_<task>.{md,json,png}`` (the scib-metrics table per
embedding and per method, and scib-metrics' own plot). Trained embeddings are kept under
``results/.progress/`` so that ``--resume`` only trains what is missing. Those embeddings are
not committed (a few MB per task), so in a fresh checkout ``--resume`` keeps the scores and run
facts that the committed report holds for a model and seed (when its data and training settings
agree) and trains and scores only what the report lacks; the report says how many it kept.

Needs the ``bench`` extra: ``pip install -e ".[bench]"``; ``--train-only`` needs neither
scib-metrics nor harmonypy (it trains, on a GPU when there is one, and keeps the embeddings).

Usage::

    python -m benchmarks.integration --task sorted_pbmc --seeds 0 1 2 --resume
    python -m benchmarks.integration --task kang_ifnb --seeds 0 1 2 --resume
    python -m benchmarks.integration --task mouse_bladder worm_neuron --seeds 0 1 2 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi

from scmixvae.datasets import load_counts
from scmixvae.io import atomic_path

from .._models import ModelSpec
from .._report import command_line, machine_description, write_report
from .paired import paired_lines

RESULTS = Path(__file__).parents[1] / "results"
# The labelled datasets get a simulated technical batch; Kang's batch is its real condition.
SIMULATED_BATCH = {"sorted_pbmc": "FACS-sorted PBMCs", "mouse_bladder": "mouse bladder cells",
                   "worm_neuron": "worm neurons"}  # fmt: skip
TASKS = {task: ("batch", "cell_type") for task in SIMULATED_BATCH} | {
    "kang_ifnb": ("condition", None)
}
KANG_NOTE = (
    "Kang 2018 PBMCs, batch = condition (ctrl / stim). No labels: batch-mixing scores only, "
    "each computed over all cells as one label. Stimulation is biology, not a technical batch: "
    "perfect mixing would also have removed the interferon response, so a higher mixing score "
    "is not simply better here."
)


def task_note(task: str, args) -> str:
    """What the task's batch and labels are, with the thinning ``args`` actually used."""
    if task not in SIMULATED_BATCH:
        return KANG_NOTE
    labels = "the sorted populations" if task == "sorted_pbmc" else "the annotated cell types"
    return (
        f"Half of the {SIMULATED_BATCH[task]} (chosen at random) was thinned to "
        f"{args.depth * 100:g} % depth and by per-gene capture efficiencies min(1, exp(N(0, "
        f"{args.efficiency_sigma:g}^2))) (binomial thinning, counts stay integers); batch = "
        f"original / thinned, labels = {labels}."
    )


ALL_CELLS = "all cells"
# Worm neurons: the thinned half leaves ~2,500 genes in fewer than 3 of its cells, and
# seurat_v3's per-batch loess fit is then singular; these tasks keep only the genes detected in
# at least 3 cells of every batch. (The other tasks keep their published gene sets.)
PER_BATCH_GENE_FILTER = {"worm_neuron"}


def simulate_technical_batch(
    counts: sp.csr_matrix, depth: float, efficiency_sigma: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Thin ``counts`` to ``depth`` and by per-gene capture efficiencies; integers stay integers.

    Returns
    -------
    The thinned counts, and the efficiencies ``e_g`` (``[n_genes]``, at most 1).
    """
    if not 0 < depth <= 1:
        raise ValueError(f"depth must be in (0, 1], got {depth}.")
    counts = sp.csr_matrix(counts, dtype=np.float64)
    efficiency = np.minimum(1.0, np.exp(rng.normal(0.0, efficiency_sigma, counts.shape[1])))
    keep = depth * efficiency[counts.indices]
    thinned = counts.copy()
    thinned.data = rng.binomial(counts.data.astype(np.int64), keep).astype(np.float64)
    thinned.eliminate_zeros()
    return thinned.astype(np.float32), efficiency


def detected_in_every_batch(adata, batch_key: str, min_cells: int) -> np.ndarray:
    """Genes with a count in at least ``min_cells`` cells of each batch (boolean mask)."""
    detected = (adata.layers["counts"] > 0).tocsr()
    keep = np.ones(adata.n_vars, dtype=bool)
    for batch in adata.obs[batch_key].unique():
        in_batch = (adata.obs[batch_key] == batch).to_numpy()
        keep &= np.asarray(detected[in_batch].sum(axis=0)).ravel() >= min_cells
    return keep


def prepare(task: str, args) -> sc.AnnData:
    """The task's counts (2,000 HVGs), batch and label columns, and the uncorrected PCA."""
    batch_key = TASKS[task][0]
    adata = load_counts(task)
    if args.max_cells is not None and adata.n_obs > args.max_cells:
        keep = np.random.default_rng(args.batch_seed).choice(adata.n_obs, args.max_cells, False)
        adata = adata[np.sort(keep)].copy()
    if task in SIMULATED_BATCH:
        rng = np.random.default_rng(args.batch_seed)
        second = np.zeros(adata.n_obs, dtype=bool)
        second[rng.choice(adata.n_obs, adata.n_obs // 2, replace=False)] = True
        counts = sp.csr_matrix(adata.layers["counts"])
        thinned, _ = simulate_technical_batch(
            counts[second], args.depth, args.efficiency_sigma, rng
        )
        counts = sp.vstack([counts[~second], thinned]).tocsr()
        order = np.concatenate([np.flatnonzero(~second), np.flatnonzero(second)])
        adata = adata[order].copy()
        adata.layers["counts"] = counts
        adata.X = counts.copy()
        adata.obs[batch_key] = pd.Categorical(np.where(second[order], "thinned", "original"))
    else:
        adata.obs["label"] = pd.Categorical([ALL_CELLS] * adata.n_obs)
    sc.pp.filter_genes(adata, min_cells=3)
    if task in PER_BATCH_GENE_FILTER:
        adata = adata[:, detected_in_every_batch(adata, batch_key, min_cells=3)].copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=args.n_genes, flavor="seurat_v3",
                                layer="counts", batch_key=batch_key, subset=True)  # fmt: skip
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.pca(adata, n_comps=30, random_state=0)
    return adata


def harmony(adata, batch_key: str) -> np.ndarray:
    """Harmony (harmonypy) on the PCA."""
    import harmonypy

    result = harmonypy.run_harmony(
        adata.obsm["X_pca"], adata.obs, batch_key, random_state=0, verbose=False
    )
    corrected = np.asarray(result.Z_corr)
    # harmonypy returns components x cells in most releases
    return corrected.T if corrected.shape[0] != adata.n_obs else corrected


def train_embedding(spec: ModelSpec, adata, batch_key: str, seed: int, args) -> tuple:
    """Train one model on the counts; return its latent means and a row of run facts."""
    scvi.settings.seed = seed
    data = sc.AnnData(adata.layers["counts"].copy(), obs=adata.obs[[batch_key]].copy())
    data.var_names = adata.var_names
    model = spec.build(data, batch_key=batch_key)
    start = time.perf_counter()
    model.train(
        max_epochs=args.max_epochs,
        batch_size=512,
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": 20},
        early_stopping=True,
        early_stopping_patience=20,
        train_size=0.9,
        enable_progress_bar=False,
        **spec.train_kwargs,
    )
    epochs = len(model.history["train_loss"])
    row = {"model": spec.name, "code": spec.code, "seed": seed, "epochs": epochs,
           "stopped_early": epochs < args.max_epochs,
           "wall_seconds": time.perf_counter() - start,
           "device": machine_description()}  # fmt: skip
    return model.get_latent_representation(), row


# Settings that change what a trained embedding's scores measured; reused only when these agree.
SCORE_SETTINGS = ("n_genes", "max_cells", "batch_seed", "depth", "efficiency_sigma", "max_epochs")


def reported_scores(task: str, args) -> tuple[dict[str, dict], dict[str, dict]]:
    """Scores and run facts of the trained embeddings in the task's earlier report.

    Returns
    -------
    Both keyed by embedding (``"<model> seed <seed>"``); empty without ``--resume``, without an
    earlier report, or when its settings (:data:`SCORE_SETTINGS`) differ from ``args``.
    """
    path = args.out / f"integration_{task}.json"
    if not (args.resume and path.exists()):
        return {}, {}
    payload = json.loads(path.read_text())
    if any(payload["settings"].get(k) != getattr(args, k) for k in SCORE_SETTINGS):
        print(f"not reusing the scores in {path}: its settings differ", flush=True)
        return {}, {}
    runs = {f"{r['model']} seed {r['seed']}": r for r in payload["runs"]}
    scores = {k: v for k, v in payload["per_embedding"].items() if k in runs}
    return scores, {k: r for k, r in runs.items() if k in scores}


def embed(task: str, adata, args, train=None) -> tuple[list[str], list[dict], dict[str, dict]]:
    """The trained models' embeddings in ``adata.obsm``, reused from disk with ``--resume``.

    (:func:`run_task` adds the PCA and Harmony ones.) With ``--resume``, a model and seed whose
    embedding is not on disk but whose scores the earlier report holds
    (:func:`reported_scores`) is neither trained nor embedded.

    With ``--score-trained``, a model and seed with neither is skipped, not trained.

    Returns
    -------
    The keys of the embeddings to score, every trained model's run facts (in report order),
    the reused scores by embedding key, and the skipped embeddings' keys.
    """
    train = train or train_embedding
    old_scores, old_runs = reported_scores(task, args)
    reused = {}
    batch_key = TASKS[task][0]
    progress = args.out / ".progress" / f"integration_{task}"
    progress.mkdir(parents=True, exist_ok=True)
    keys, runs, skipped = ["PCA", "Harmony"], [], []
    for seed in args.seeds:
        for spec in [ModelSpec.parse(m) for m in args.models]:
            key = f"{spec.name} seed {seed}"
            stem = progress / f"{spec.code.replace(':', '_')}_seed{seed}"
            if args.resume and stem.with_suffix(".npy").exists():
                latent = np.load(stem.with_suffix(".npy"))
                row = json.loads(stem.with_suffix(".json").read_text())
            elif key in old_scores:
                reused[key] = old_scores[key]
                runs.append(old_runs[key])
                continue
            elif args.score_trained:
                skipped.append(key)
                continue
            else:
                latent, row = train(spec, adata, batch_key, seed, args)
                with atomic_path(stem.with_suffix(".npy")) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, latent)
                with atomic_path(stem.with_suffix(".json")) as tmp:
                    tmp.write_text(json.dumps(row))
            print(json.dumps(row), flush=True)
            adata.obsm[key] = latent
            keys.append(key)
            runs.append(row)
    return keys, runs, reused, skipped


def run_task(task: str, args) -> dict:
    batch_key, label_key = TASKS[task]
    adata = prepare(task, args)
    keys, runs, reused, skipped = embed(task, adata, args)
    if args.train_only:
        return {"task": task, "runs": runs}
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    adata.obsm["PCA"] = adata.obsm["X_pca"]
    adata.obsm["Harmony"] = harmony(adata, batch_key)
    bio = BioConservation() if label_key else None
    benchmarker = Benchmarker(
        adata,
        batch_key=batch_key,
        label_key=label_key or "label",
        embedding_obsm_keys=keys,
        bio_conservation_metrics=bio,
        batch_correction_metrics=BatchCorrection(),
        pre_integrated_embedding_obsm_key="X_pca",
        n_jobs=1,
        progress_bar=False,
    )
    benchmarker.benchmark()
    table = benchmarker.get_results(min_max_scale=False)
    metric_type = table.loc["Metric Type"]
    scores = table.drop(index="Metric Type").astype(float)
    if reused:
        kept = pd.DataFrame.from_dict(reused, orient="index")
        scores = pd.concat([scores, kept[scores.columns]])
    scores = scores.loc[["PCA", "Harmony", *(f"{r['model']} seed {r['seed']}" for r in runs)]]
    methods = pd.Series({k: k.split(" seed ")[0] for k in scores.index})
    by_method = scores.groupby(methods, sort=False).agg(["mean", "std"])
    stem = args.out / f"integration_{task}"
    payload = {
        "task": task,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "batch_key": batch_key,
        "label_key": label_key,
        "settings": vars(args) | {"out": str(args.out)},
        "metric_type": metric_type.to_dict(),
        "per_embedding": json.loads(scores.to_json(orient="index", double_precision=15)),
        "runs": runs,
        "not_trained": skipped,
    }
    lines = report_lines(task, adata, scores, by_method, runs, args, len(reused), skipped)
    write_report(stem, payload, lines)
    if reused:
        # scib-metrics draws its table from get_results(); the reused scores were never
        # benchmarked here, so the plot is fed the merged table instead.
        merged = pd.concat([scores, table.loc[["Metric Type"]]])
        benchmarker.get_results = lambda **_: merged
        benchmarker._embedding_obsm_keys = list(scores.index)  # sets the figure's height
    benchmarker.plot_results_table(min_max_scale=False, show=False)
    fig = plt.gcf()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close("all")
    return payload


def report_lines(
    task, adata, scores, by_method, runs, args, n_reused: int = 0, skipped: tuple = ()
) -> list[str]:
    columns = list(scores.columns)
    lines = [
        f"# Batch integration: {task} ({adata.n_obs} cells, {adata.n_vars} genes)",
        "",
        task_note(task, args),
        "",
        f"Trained models: seeds {args.seeds}, at most {args.max_epochs} epochs with early "
        "stopping (patience 20) on 10 % of the cells, 20-epoch KL warm-up, batch 512. Scores "
        "from scib-metrics (not min-max scaled; higher is better), mean ± std over seeds.",
        "",
        f"Command: `{args.command}`"
        + (
            f" (it kept the scores of {n_reused} trained embeddings from the earlier report "
            "with the same settings, and trained and scored the rest)"
            if n_reused
            else ""
        ),
        "",
        *(
            [f"Not trained yet, so not in the tables: {', '.join(skipped)}.", ""]
            if skipped
            else []
        ),
        "| method | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for method, row in by_method.iterrows():
        cells = []
        for column in columns:
            mean, std = row[(column, "mean")], row[(column, "std")]
            cells.append(f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += paired_lines(scores)
    lines += ["", "| model | seed | epochs | stopped early | training seconds | trained on |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        lines.append(f"| {run['model']} | {run['seed']} | {run['epochs']} | "
                     f"{run['stopped_early']} | {run['wall_seconds']:.0f} | "
                     f"{run.get('device', '–')} |")  # fmt: skip
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", choices=list(TASKS), default=["sorted_pbmc"])
    parser.add_argument("--models", nargs="+", default=["scvi", "S5", "S50:shared:A1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--max-cells", type=int, default=None, help="subsample (quick runs)")
    parser.add_argument("--batch-seed", type=int, default=0)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--efficiency-sigma", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="reuse trained embeddings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--score-trained",
        action="store_true",
        help="with --resume: score the embeddings trained so far and train none (a long run "
        "in progress); the report names the ones it left out",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train and keep the missing embeddings, score nothing (for a GPU machine without "
        "scib-metrics; score them later with --resume where the embeddings are)",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.score_trained and not args.resume:
        parser.error("--score-trained scores the embeddings kept by earlier runs; add --resume.")
    args.command = command_line("benchmarks.integration", argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return [run_task(task, args) for task in args.task]


if __name__ == "__main__":
    main()
