"""Train MixSCVI with N CPU processes (Lightning DDP over gloo); rank 0 writes JSON results.

Usage: python train_ddp.py OUT.json N_PROCESSES            (the cells in memory)
       python train_ddp.py OUT.json N_PROCESSES STORE      (streamed from a SOMA experiment)
       python train_ddp.py OUT.json N_PROCESSES STORE scanvi   (MixSCANVI, labels from the store)
       python train_ddp.py --write-soma STORE              (write that experiment first)

The same 1,024 sorted-PBMC cells and 300 genes either way. From a store each rank streams its
own part of every epoch (tiledbsoma-ml splits the cells by DDP rank), so two processes with half
the minibatch take the steps of one.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import scanpy as sc
import scvi
import torch

from scmixvae import MixSCANVI, MixSCVI
from scmixvae.datasets import load_counts


def cells():
    adata = load_counts("sorted_pbmc")
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 1024, replace=False)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    return adata[:, :300].copy()


def write_soma(store: str) -> None:
    import tiledbsoma.io

    adata = cells()
    adata.X = adata.layers["counts"]
    adata.obs["batch"] = "pbmc"
    del adata.layers
    tiledbsoma.io.from_anndata(store, adata, measurement_name="RNA")


def main(out: str, n_processes: int, store: str | None = None, kind: str = "scvi") -> None:
    scvi.settings.seed = 0
    kwargs = {"max_epochs": 6, "enable_progress_bar": False, "early_stopping": False}
    if store is None:
        adata = cells()
        MixSCVI.setup_anndata(adata, layer="counts")
        model = MixSCVI(adata, n_components=3)
        # same global batch and number of steps as one process
        kwargs.update(batch_size=128 // n_processes, train_size=1.0)
    else:
        from scmixvae.singlecell.soma import soma_datamodule

        options = {"batch_size": 128 // n_processes, "train_size": 1.0}
        if kind == "scanvi":
            options.update(labels_key="cell_type", model_name="MixSCANVI")
        datamodule = soma_datamodule(store, "batch", **options)
        if kind == "scanvi":
            model = MixSCANVI(
                adata=None, registry=datamodule.registry, datamodule=datamodule, n_components=3
            )
        else:
            model = MixSCVI(adata=None, registry=datamodule.registry, n_components=3)
        kwargs["datamodule"] = datamodule
    if n_processes > 1:
        kwargs.update(
            accelerator="cpu", devices=n_processes, strategy="ddp_find_unused_parameters_true"
        )
    start = time.perf_counter()
    model.train(**kwargs)
    seconds = time.perf_counter() - start
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    torch.set_num_threads(1)
    model.module.eval()
    evaluation, scores = {}, {}
    if store is not None:
        from scmixvae.singlecell.soma import embed_soma, inference_datamodule

        loader = inference_datamodule(model, store).inference_dataloader()  # re-iterable
        evaluation = {"dataloader": loader}
        latent = embed_soma(model, store).obsm["X_mixscvi"]
        if kind == "scanvi":  # the inference stream is in soma_joinid order, as the store's obs
            predicted = np.asarray(model.predict(dataloader=loader))
            truth = cells().obs["cell_type"].astype(str).to_numpy()
            history = model.history.get("train_accuracy")  # absent: no classifier was trained
            scores = {
                "accuracy": float(np.mean(predicted == truth)),
                "n_predicted": len(predicted),
                "train_accuracy": None if history is None else float(history.iloc[-1, 0]),
            }
    else:
        latent = model.get_latent_representation()
    result = {
        **scores,
        "n_processes": n_processes,
        "steps": int(model.trainer.global_step),
        "elbo": float(model.get_elbo(**evaluation)),
        "n_embedded": int(latent.shape[0]),
        "latent_finite": bool(np.isfinite(latent).all()),
        "first_train_loss": float(model.history["train_loss"].iloc[0, 0]),
        "last_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
        "train_seconds": seconds,
    }
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    if sys.argv[1] == "--write-soma":
        write_soma(sys.argv[2])
    else:
        main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:5])
