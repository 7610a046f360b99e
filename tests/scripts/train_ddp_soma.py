"""Train MixSCVI from a SOMA experiment with N CPU processes (Lightning DDP over gloo).

Usage: python train_ddp_soma.py write STORE          (write the store: 1,024 sorted-PBMC cells)
       python train_ddp_soma.py train STORE OUT.json N_PROCESSES   (rank 0 writes the results)

Each rank streams its own part of every epoch from the store (tiledbsoma-ml splits the cells
by the DDP rank), so two processes with half the minibatch see what one process sees.
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

from scmixvae import MixSCVI
from scmixvae.singlecell.soma import embed_soma, inference_datamodule, soma_datamodule


def write(store: str) -> None:
    import tiledbsoma.io

    from scmixvae.datasets import load_counts

    adata = load_counts("sorted_pbmc")
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 1024, replace=False)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    adata = adata[:, :300].copy()
    adata.X = adata.layers["counts"]
    adata.obs["batch"] = "pbmc"
    del adata.layers
    tiledbsoma.io.from_anndata(store, adata, measurement_name="RNA")


def train(store: str, out: str, n_processes: int) -> None:
    scvi.settings.seed = 0
    datamodule = soma_datamodule(store, "batch", batch_size=128 // n_processes, train_size=1.0)
    model = MixSCVI(adata=None, registry=datamodule.registry, n_components=3)
    kwargs = {"max_epochs": 6, "datamodule": datamodule, "enable_progress_bar": False,
              "early_stopping": False}  # fmt: skip
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
    loader = inference_datamodule(model, store).inference_dataloader()
    result = {
        "n_processes": n_processes,
        "steps": int(model.trainer.global_step),
        "elbo": float(model.get_elbo(dataloader=loader)),
        "n_embedded": int(embed_soma(model, store).n_obs),
        "first_train_loss": float(model.history["train_loss"].iloc[0, 0]),
        "last_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
        "train_seconds": seconds,
    }
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3], int(sys.argv[4]))
