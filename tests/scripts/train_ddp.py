"""Train MixSCVI with N CPU processes (Lightning DDP over gloo); rank 0 writes JSON results.

Usage: python train_ddp.py OUT.json N_PROCESSES
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
from scmixvae.datasets import load_counts


def main(out: str, n_processes: int) -> None:
    scvi.settings.seed = 0
    adata = load_counts("sorted_pbmc")
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 1024, replace=False)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    adata = adata[:, :300].copy()
    MixSCVI.setup_anndata(adata, layer="counts")
    model = MixSCVI(adata, n_components=3)
    kwargs = {
        "max_epochs": 6,
        "batch_size": 128 // n_processes,  # same global batch and steps as one process
        "train_size": 1.0,
        "enable_progress_bar": False,
        "early_stopping": False,
    }
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
    result = {
        "n_processes": n_processes,
        "world_size": model.trainer.world_size if hasattr(model, "trainer") else n_processes,
        "elbo": float(model.get_elbo()),
        "latent_finite": bool(np.isfinite(model.get_latent_representation()).all()),
        "first_train_loss": float(model.history["train_loss"].iloc[0, 0]),
        "last_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
        "train_seconds": seconds,
    }
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
