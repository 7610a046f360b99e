"""``scmixvae fit`` on a TileDB-SOMA experiment: train from disk, write the embedding.

The store is read, never written: the embedding goes to a separate ``.h5ad`` holding only the
cells' ``obs_id`` / ``soma_joinid`` and ``.obsm['X_mixscvi']`` (no count matrix), written
atomically. A shared or read-only store (the CELLxGENE Census) stays untouched, a failed run
leaves nothing half-written inside it, and the file joins back to the store on ``soma_joinid``.
Neighbours, leiden and UMAP are left to the user at this scale (``sc.pp.neighbors`` on the
embedding file).
"""

from __future__ import annotations

import argparse
import time


def fit_soma(args: argparse.Namespace) -> int:
    """Train MixSCVI from the SOMA experiment ``args.input``; write ``args.output``."""
    from scmixvae.cli import InputError, kl_warmup_plan, mixture_options

    if args.batch_key is None:
        raise InputError(
            "--batch-key is required with a SOMA experiment (an obs column, e.g. dataset_id)."
        )
    if args.n_top_genes:
        raise InputError(
            "--n-top-genes needs the whole matrix in memory; with a SOMA experiment select "
            "genes in the store (or a var query) instead."
        )
    import scvi

    from scmixvae import MixSCVI
    from scmixvae.io import write_h5ad_atomic
    from scmixvae.singlecell.soma import embed_soma, soma_datamodule

    scvi.settings.seed = args.seed
    datamodule = soma_datamodule(
        args.input,
        args.batch_key,
        measurement=args.measurement,
        layer=args.layer or "data",
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model = MixSCVI(
        adata=None,
        registry=datamodule.registry,
        objective=args.objective,
        n_latent=args.n_latent,
        gene_likelihood=args.gene_likelihood,
        **mixture_options(args),
    )
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,  # None: scvi-tools' heuristic from the number of cells
        datamodule=datamodule,
        accelerator=args.accelerator,
        enable_progress_bar=not args.no_progress_bar,
        plan_kwargs=kl_warmup_plan(args),
    )
    elapsed = time.perf_counter() - start
    if args.model_dir:
        model.save(args.model_dir, overwrite=True)
    embedding = embed_soma(model, args.input, batch_size=max(args.batch_size, 1024))
    embedding.uns["X_mixscvi"]["train_seconds"] = elapsed
    write_h5ad_atomic(embedding, args.output)
    print(
        f"wrote {args.output}: the embedding of {embedding.n_obs} cells of {args.input} "
        f"({datamodule.n_vars} genes), {model.n_components} components, trained from disk "
        f"in {elapsed:.1f}s"
    )
    return 0
