"""Label transfer with uncertainty: MixSCANVI against SCANVI, kNN and CellTypist on real data.

The realistic workflow, per dataset and seed:

1. half of the cells (at random) form the query, which gets a simulated technical batch (the
   integration benchmark's binomial thinning: 50 % depth, per-gene capture efficiencies);
2. the rest is the reference; a tenth of it is held out (labelled, never trained on) to choose
   the "unknown" threshold and to draw the reliability diagram;
3. task ``A``: every type in both; task ``B``: one type (the largest, or a small one with at
   least 30 cells) is removed from the reference, the query keeps it;
4. a reference model is trained on the reference (early stopping on the validation bound), then
   mapped onto the query with scArches (``load_query_data``, ``--query-epochs`` epochs,
   weight decay 0, as scvi-tools' tutorial) and predicts the query:

   * ``scvi``: SCVI, then SCANVI from it (its soft prediction at the posterior mean, and the
     average of 10 draws), and a kernel-weighted kNN vote on SCVI's latent (HLCA recipe);
   * ``S5``, ``S5:shared:A1``, ... : MixSCVI, then MixSCANVI from it (the mixture predictive at
     the component means and over 10 draws per component), and the kNN vote on its latent;
   * CellTypist's model (one-vs-rest logistic regression on log-normalised counts) with
     ``--logistic``, fitted with scikit-learn (CellTypist 1.7.1 fails on current scikit-learn).

Genes: the 2,000 most variable of the reference (seurat_v3 on counts). Every method's
uncertainty is scored the same way (:mod:`scmixvae.uncertainty`); see ``_label_report`` for the
tables. Rows are appended to ``label_transfer_<dataset>.json`` as they finish; ``--resume``
skips the finished ones.

Usage::

    python -m benchmarks.label_transfer --datasets sorted_pbmc --tasks A --seeds 0 1 2 \
        --models scvi S5 --logistic --resume
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch

from scmixvae import MixSCANVI
from scmixvae.datasets import load_counts
from scmixvae.io import atomic_path
from scmixvae.knn import knn_label_probabilities
from scmixvae.uncertainty import (
    classification_metrics,
    detection_auroc,
    entropy,
    predictive_uncertainty,
    reliability_table,
    unknown_threshold,
)

from .._models import ModelSpec
from .._report import LoadMonitor, command_line, machine_description
from ..integration.protocol import simulate_technical_batch
from .report import write_dataset_report, write_summary

RESULTS = Path(__file__).parents[1] / "results"
DATASETS = ("sorted_pbmc", "mouse_bladder", "worm_neuron")
UNLABELED = "Unknown"
LABELS = "cell_type"


def split_cells(adata, task: str, seed: int, args) -> dict:
    """Reference, held-out reference and query AnnData of one task and seed (see module doc)."""
    rng = np.random.default_rng(seed)
    types = adata.obs[LABELS].astype(str).to_numpy()
    query = rng.random(adata.n_obs) < 0.5
    unseen = None
    if task != "A":
        counts = pd.Series(types).value_counts()
        unseen = counts.index[0] if task == "B_largest" else counts[counts >= 30].index[-1]
    reference = ~query & (types != unseen)
    held_out = reference & (rng.random(adata.n_obs) < args.held_out)
    reference &= ~held_out
    ref = adata[reference].copy()
    sc.pp.highly_variable_genes(ref, n_top_genes=args.n_genes, flavor="seurat_v3",
                                layer="counts", subset=True)  # fmt: skip
    genes = ref.var_names
    held = adata[held_out, genes].copy()
    qry = adata[query, genes].copy()
    thinned, _ = simulate_technical_batch(
        sp.csr_matrix(qry.layers["counts"]), args.depth, args.efficiency_sigma, rng
    )
    qry.layers["counts"] = thinned
    qry.X = thinned.copy()
    for part, batch in ((ref, "reference"), (held, "reference"), (qry, "query")):
        part.obs["batch"] = pd.Categorical([batch] * part.n_obs)
        part.obs["truth"] = part.obs[LABELS].astype(str).to_numpy()
    qry.obs[LABELS] = pd.Categorical([UNLABELED] * qry.n_obs)
    return {"reference": ref, "held_out": held, "query": qry, "unseen": unseen}


def _fit_reference(spec: ModelSpec, ref, seed: int, args):
    scvi.settings.seed = seed
    model = spec.build(ref, layer="counts", batch_key="batch", labels_key=LABELS)
    model.train(max_epochs=args.max_epochs, batch_size=128, early_stopping=True,
                early_stopping_patience=args.patience,
                plan_kwargs={"n_epochs_kl_warmup": args.kl_warmup_epochs},
                enable_progress_bar=False, **spec.train_kwargs)  # fmt: skip
    return model


def _map_query(reference_model, query, seed: int, args, train_kwargs: dict):
    scvi.settings.seed = seed
    cls = type(reference_model)
    cls.prepare_query_anndata(query, reference_model)
    model = cls.load_query_data(query, reference_model)
    model.train(max_epochs=args.query_epochs, batch_size=128,
                plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False,
                **train_kwargs)  # fmt: skip
    return model


def _scanvi_component_probs(model, adata, draws: int | None, codes: dict) -> np.ndarray:
    """``(S, n, C)`` label probabilities in the dataset's label codes (a type the reference
    lacks gets 0): MixSCANVI's per component, SCANVI's as S = 1."""
    model.module.eval()
    if isinstance(model, MixSCANVI):
        probs = model.get_component_label_probabilities(
            adata, use_posterior_mean=draws is None, n_samples=draws or 1
        )
    elif draws is None:
        probs = model.predict(adata, soft=True).to_numpy()[None]
    else:
        runs = [model.predict(adata, soft=True, use_posterior_mean=False).to_numpy()
                for _ in range(draws)]  # fmt: skip
        probs = np.mean(runs, axis=0)[None]
    names = model._label_mapping[: probs.shape[-1]]
    out = np.zeros((*probs.shape[:-1], len(codes)))
    out[..., [codes[str(n)] for n in names]] = probs
    return out


def score(name, probs_query, probs_held, split, codes, extra_uncertainty=None) -> dict:
    """Every metric of one method on one split (query known types, unseen type, held-out)."""
    truth = split["query"].obs["truth"].to_numpy()
    unseen = (
        truth == split["unseen"] if split["unseen"] is not None else np.zeros(len(truth), bool)
    )
    known = ~unseen
    q_labels = np.array([codes.get(t, -1) for t in truth])
    h_labels = np.array([codes[t] for t in split["held_out"].obs["truth"]])
    # the predictive entropy for every method, not only the mixtures: an unseen-type AUROC
    # from the mixture's entropy is only fair against the same score of the others
    uncertainties = {"1-confidence": 1 - probs_query.max(1), "entropy": entropy(probs_query)}
    uncertainties.update(extra_uncertainty or {})
    held_uncertainty = 1 - probs_held.max(1)
    threshold = unknown_threshold(held_uncertainty, probs_held.argmax(1) == h_labels, 0.05)
    flagged = uncertainties["1-confidence"] > threshold
    row = {"method": name, **classification_metrics(
        probs_query[known], q_labels[known], uncertainties["1-confidence"][known])}  # fmt: skip
    row["reliability"] = reliability_table(probs_query[known], q_labels[known]).to_dict("list")
    row["held_out_accuracy"] = float((probs_held.argmax(1) == h_labels).mean())
    row["unknown_threshold"] = threshold
    row["known_flagged"] = float(flagged[known].mean())
    for key, u in uncertainties.items():
        correct = probs_query[known].argmax(1) == q_labels[known]
        row[f"error_auroc[{key}]"] = detection_auroc(u[known], ~correct)
        if unseen.any():
            row[f"unseen_auroc[{key}]"] = detection_auroc(u, unseen)
    if unseen.any():
        row["unseen_flagged"] = float(flagged[unseen].mean())
    return row


def run_reference_family(spec: ModelSpec, split, seed, codes, args) -> list[dict]:
    """Train one reference model, map the query, score its kNN and SCANVI routes."""
    timings = {}
    start = time.perf_counter()
    base = _fit_reference(spec, split["reference"].copy(), seed, args)
    timings["reference_s"] = time.perf_counter() - start
    epochs = len(base.history["elbo_train"])
    start = time.perf_counter()
    base_query = _map_query(base, split["query"].copy(), seed, args, spec.train_kwargs)
    timings["query_s"] = time.perf_counter() - start
    ref_labels = np.array([codes[t] for t in base.adata.obs["truth"]])
    ref_latent = base.get_latent_representation()
    latents = {"query": base_query.get_latent_representation(),
               "held": base.get_latent_representation(split["held_out"])}  # fmt: skip
    kn = {part: knn_label_probabilities(ref_latent, ref_labels, latent, len(codes))
          for part, latent in latents.items()}  # fmt: skip
    extra = {}
    if spec.kind == "mixscvi":
        extra["posterior_trace"] = base_query.get_posterior_uncertainty()
    rows = [score(f"{spec.name} + kNN", kn["query"], kn["held"], split, codes, extra)]
    rows[-1].update(timings, reference_epochs=epochs)
    cls = MixSCANVI if spec.kind == "mixscvi" else scvi.model.SCANVI
    start = time.perf_counter()
    scvi.settings.seed = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scanvi = cls.from_scvi_model(base, UNLABELED, labels_key=LABELS)
    scanvi.train(max_epochs=args.scanvi_epochs, batch_size=128, early_stopping=True,
                 early_stopping_patience=args.scanvi_patience,
                 enable_progress_bar=False, **spec.train_kwargs)  # fmt: skip
    timings["scanvi_s"] = time.perf_counter() - start
    scanvi_epochs = len(scanvi.history["elbo_train"])
    start = time.perf_counter()
    scanvi_query = _map_query(scanvi, split["query"].copy(), seed, args, spec.train_kwargs)
    timings["scanvi_query_s"] = time.perf_counter() - start
    name = "SCANVI" if spec.kind == "scvi" else spec.name.replace("MixSCVI", "MixSCANVI")
    for draws in (None, args.draws):
        start = time.perf_counter()
        cq = _scanvi_component_probs(scanvi_query, split["query"], draws, codes)
        predict_s = time.perf_counter() - start
        ch = _scanvi_component_probs(scanvi, split["held_out"], draws, codes)
        extra = {}
        if cq.shape[0] > 1:
            u = predictive_uncertainty(cq)
            # score() computes the entropy of the mean for every method; only the split is new
            extra = {"disagreement": u["disagreement"].to_numpy()}
        label = name if draws is None else f"{name}, {draws} draws"
        rows.append(score(label, cq.mean(0), ch.mean(0), split, codes, extra))
        rows[-1].update(timings, predict_s=predict_s, reference_epochs=epochs,
                        scanvi_epochs=scanvi_epochs)  # fmt: skip
    return rows


def run_logistic(split, codes, args) -> list[dict]:
    """CellTypist's model, fitted with scikit-learn: one-vs-rest logistic regression (C = 1) on
    log-normalised counts scaled per gene and clipped at 10. CellTypist 1.7.1 itself does not
    run with the installed scikit-learn (it passes ``multi_class``, which scikit-learn removed).
    Its one-vs-rest probabilities are normalised to sum to one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    def lognorm(adata) -> np.ndarray:
        counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float64)
        size = np.asarray(counts.sum(1)).clip(1, None)
        return np.log1p(np.asarray((counts.multiply(1e4 / size)).todense()))

    start = time.perf_counter()
    scaler = StandardScaler().fit(lognorm(split["reference"]))
    labels = np.array([codes[t] for t in split["reference"].obs["truth"]])
    model = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=1000))
    model.fit(np.clip(scaler.transform(lognorm(split["reference"])), None, 10), labels)
    train_s = time.perf_counter() - start

    def probs(adata) -> np.ndarray:
        out = np.zeros((adata.n_obs, len(codes)))
        scores = model.predict_proba(np.clip(scaler.transform(lognorm(adata)), None, 10))
        out[:, model.classes_] = scores
        return out / np.clip(out.sum(1, keepdims=True), 1e-12, None)

    row = score("logistic regression (CellTypist's model)", probs(split["query"]),
                probs(split["held_out"]), split, codes)  # fmt: skip
    row["reference_s"] = train_s
    return [row]


def _progress_path(dataset: str, args) -> Path:
    return Path(args.out) / f"label_transfer_{dataset}.json"


def load_rows(dataset: str, args) -> list[dict]:
    path = _progress_path(dataset, args)
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def save_rows(dataset: str, rows: list[dict], args, argv) -> None:
    path = _progress_path(dataset, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command_line("benchmarks.label_transfer", argv),
               "machine": machine_description(), "settings": _settings(args),
               "rows": rows}  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=float))


def _settings(args) -> dict:
    keys = ("max_epochs", "patience", "kl_warmup_epochs", "scanvi_epochs", "scanvi_patience",
            "query_epochs", "n_genes", "depth", "efficiency_sigma", "held_out", "draws",
            "max_cells")  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def run_dataset(dataset: str, args, argv) -> list[dict]:
    adata = load_counts(dataset)
    if args.max_cells is not None and adata.n_obs > args.max_cells:
        keep = np.random.default_rng(0).choice(adata.n_obs, args.max_cells, replace=False)
        adata = adata[np.sort(keep)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    rows = load_rows(dataset, args) if args.resume else []
    stored = load_rows(dataset, args)
    if (
        args.resume
        and stored
        and json.loads(_progress_path(dataset, args).read_text())["settings"] != _settings(args)
    ):
        raise SystemExit(f"{dataset}: stored rows were run with other settings; no --resume.")
    codes = {t: i for i, t in enumerate(sorted(adata.obs[LABELS].astype(str).unique()))}
    families = [*args.models, *(["logistic"] if args.logistic else [])]
    if args.redo:
        # rows of the benchmark's earlier code (no load record, and before every method had the
        # entropy) are rerun, not patched, so every row of a table comes from the same code;
        # rows that have the record are kept, so a rerun of the command does nothing new
        rows = [
            r
            for r in rows
            if "peak_load" in r
            or not (
                r["task"] in args.tasks and r["seed"] in args.seeds and r["family"] in families
            )
        ]
    done = {(r["task"], r["seed"], r["family"]) for r in rows}
    for task in args.tasks:
        for seed in args.seeds:
            split = None
            for family in families:
                if (task, seed, family) in done or args.report_only:
                    continue
                split = split or split_cells(adata, task, seed, args)
                print(f"{dataset} task {task} seed {seed}: {family}", flush=True)
                with LoadMonitor() as load:
                    if family == "logistic":
                        new = run_logistic(split, codes, args)
                    else:
                        spec = ModelSpec.parse(family)
                        new = run_reference_family(spec, split, seed, codes, args)
                threads = torch.get_num_threads()
                for row in new:
                    row.update(task=task, seed=seed, family=family, unseen=split["unseen"],
                               peak_load=load.peak, torch_threads=threads)  # fmt: skip
                rows += new
                save_rows(dataset, rows, args, argv)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--tasks", nargs="+", default=["A"], choices=["A", "B_largest", "B_small"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--models", nargs="+", default=["scvi", "S5"])
    p.add_argument("--logistic", action="store_true", help="CellTypist's model (sklearn)")
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--kl-warmup-epochs", type=int, default=20)
    p.add_argument("--scanvi-epochs", type=int, default=200)
    p.add_argument("--scanvi-patience", type=int, default=20)
    p.add_argument("--query-epochs", type=int, default=100)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--efficiency-sigma", type=float, default=0.5)
    p.add_argument("--held-out", type=float, default=0.1)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--max-cells", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--redo", action="store_true",
        help="with --resume: run again the selected rows stored by the benchmark's earlier code "
        "(without the machine-load record)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.resume = args.resume or args.report_only
    if args.redo and (args.report_only or not args.resume):
        raise SystemExit("--redo reruns stored rows: use it with --resume, not --report-only.")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for dataset in args.datasets:
        rows = run_dataset(dataset, args, argv)
        if rows:
            write_dataset_report(dataset, rows, Path(args.out), command_line(
                "benchmarks.label_transfer", argv))  # fmt: skip
    write_summary(Path(args.out), command_line("benchmarks.label_transfer", argv))


if __name__ == "__main__":
    main()
