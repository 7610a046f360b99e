"""The ``scmixvae`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("scmixvae")
# kept in step with scmixvae.mixture.OBJECTIVES (a test checks); importing it here would make
# `--help` pay for torch
OBJECTIVE_CHOICES = ("miselbo", "ensemble", "some_to_some")
# kept in step with scmixvae.singlecell.module_priors.DEFAULT_N_PRIOR_COMPONENTS (a test checks)
DEFAULT_N_PRIOR_COMPONENTS = 20


def _add_mixture_options(p: argparse.ArgumentParser, default_components: int) -> None:
    """The mixture's options, spelled the same in every subcommand."""
    p.add_argument(
        "--n-components", "--components", dest="n_components", type=int,
        default=default_components, help="mixture components S",
    )  # fmt: skip
    p.add_argument(
        "--objective", choices=OBJECTIVE_CHOICES, default="miselbo",
        help="miselbo: each draw against the whole mixture; ensemble: against its own "
        "component; some_to_some: against the components drawn with it",
    )  # fmt: skip
    p.add_argument(
        "--shared-encoder", action="store_true",
        help="amortize the components: one encoder trunk and a head conditioned on each "
        "component's code (cheap large S)",
    )  # fmt: skip
    p.add_argument(
        "--sampled-components", "--n-sampled-components", dest="n_sampled_components",
        type=int, default=None, metavar="A",
        help="draw from A of the S components per observation and step (Some-to-All); "
        "default: all S",
    )  # fmt: skip


def _add_fit_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train MixSCVI on an .h5ad of raw counts; write embedding, leiden and UMAP",
        description=(
            "Train MixSCVI (a mixture of encoders trained with MISELBO) on raw counts and write "
            "an .h5ad with the latent embedding in .obsm['X_mixscvi'], component "
            "responsibilities and uncertainty, leiden clusters (.obs['leiden']) and a UMAP "
            "(.obsm['X_umap']). INPUT is an .h5ad path or a registered dataset name "
            "(pbmc3k, sorted_pbmc, mouse_bladder, worm_neuron, kang_ifnb) read from "
            "$SCMIXVAE_DATA_DIR. A TileDB-SOMA experiment (needs scmixvae[atlas]) is trained "
            "from disk, never loaded or written; OUTPUT then holds only the cells' obs_id, "
            "soma_joinid and .obsm['X_mixscvi'] (no neighbours, leiden or UMAP)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "input", help=".h5ad file, a TileDB-SOMA experiment (path or URI), or a dataset name"
    )
    p.add_argument("output", help="output .h5ad (written atomically)")
    _add_mixture_options(p, default_components=5)
    p.add_argument(
        "--layer", default=None,
        help="layer holding raw counts (default: .X; for a SOMA experiment the X layer 'data')",
    )  # fmt: skip
    p.add_argument(
        "--measurement", default="RNA", help="SOMA measurement holding the counts (SOMA input)"
    )
    p.add_argument("--batch-key", default=None, help="obs column with the batch")
    p.add_argument("--labels-key", default=None, help="obs column with labels (kept, unused)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (scvi-tools default)")
    p.add_argument(
        "--kl-warmup-epochs", type=int, default=None,
        help="epochs of linear KL warm-up (scvi-tools' default: 400). Until it ends the KL "
        "weight is below 1: a run much shorter than the warm-up barely integrates batches",
    )  # fmt: skip
    p.add_argument(
        "--diagnostics", choices=["means", "importance"], default="means",
        help="responsibilities and divergence from the components' densities at their means "
        "(fast, no decoding) or by importance sampling (decodes S x 10 draws per cell)",
    )  # fmt: skip
    p.add_argument(
        "--prior", choices=["standard_normal", "vamp", "mog"], default="standard_normal",
        help="the latent's prior: scVI's N(0, I), a VampPrior (pseudo-inputs through the "
        "mixture encoder, started on random cells) or a learned Gaussian mixture",
    )  # fmt: skip
    p.add_argument(
        "--n-prior-components", type=int, default=None, metavar="K",
        help="pseudo-inputs of the VampPrior, or Gaussians of the mixture prior (default "
        f"{DEFAULT_N_PRIOR_COMPONENTS})",
    )  # fmt: skip
    p.add_argument(
        "--flow-steps", type=int, default=0,
        help="steps of a latent flow shared by the components (0: none); with --prior vamp it "
        "is the method's composite recipe",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--gene-likelihood", choices=["zinb", "nb", "poisson"], default="zinb")
    p.add_argument(
        "--n-top-genes",
        type=int,
        default=None,
        help="keep this many highly variable genes (seurat_v3 on the counts) before training",
    )
    p.add_argument("--leiden-resolution", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, ...)")
    p.add_argument("--model-dir", default=None, help="also save the trained model here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=_fit)


class InputError(ValueError):
    """A command-line input that cannot be used, named before any training starts."""


def _check_fit_arguments(args: argparse.Namespace) -> None:
    """Refuse unusable arguments before anything slow is imported or read."""
    names = ("epochs", "n_components", "n_top_genes", "batch_size", "kl_warmup_epochs",
             "n_prior_components", "flow_steps")  # fmt: skip
    for name in names:
        value = getattr(args, name)
        minimum = 0 if name in ("kl_warmup_epochs", "flow_steps") else 1
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} must be at least {minimum}, got {value}.")
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
    if args.model_dir and Path(args.model_dir).exists() and not args.overwrite:
        raise FileExistsError(f"{args.model_dir} exists; pass --overwrite to replace it.")


def _read_input(source: str, layer: str | None):
    """The input AnnData and the layer holding its counts."""
    from scmixvae.datasets import COUNT_DATASETS, load_counts

    path = Path(source)
    if path.suffix == ".h5ad":
        import anndata as ad
        import h5py

        if not path.is_file():
            raise FileNotFoundError(f"input file {path} does not exist.")
        if not h5py.is_hdf5(path):
            raise InputError(f"{path} is not an .h5ad file (no HDF5 signature).")
        return ad.read_h5ad(path), layer
    if source in COUNT_DATASETS:
        return load_counts(source), layer or "counts"
    raise InputError(
        f"input {source!r} is neither an .h5ad file, a SOMA experiment nor a dataset name "
        f"({', '.join(COUNT_DATASETS)})."
    )


def _check_keys(adata, layer: str | None, batch_key: str | None, labels_key: str | None):
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"--layer {layer!r} is not a layer of the input (layers: {list(adata.layers)})."
        )
    for flag, key in (("--batch-key", batch_key), ("--labels-key", labels_key)):
        if key is not None and key not in adata.obs:
            raise InputError(
                f"{flag} {key!r} is not a column of the input's .obs "
                f"(columns: {list(adata.obs.columns)})."
            )


def mixture_options(args: argparse.Namespace) -> dict:
    """The mixture's, prior's and flow's constructor arguments from the command line."""
    names = ("n_components", "shared_encoder", "n_sampled_components", "prior",
             "n_prior_components", "flow_steps")  # fmt: skip
    return {name: getattr(args, name) for name in names}


def kl_warmup_plan(args: argparse.Namespace) -> dict:
    """``plan_kwargs`` for ``--kl-warmup-epochs`` (empty: scvi-tools' default warm-up)."""
    if args.kl_warmup_epochs is None:
        return {}
    return {"n_epochs_kl_warmup": args.kl_warmup_epochs}


def _fit(args: argparse.Namespace) -> int:
    _check_fit_arguments(args)
    if Path(args.input).is_dir() or "://" in args.input:  # a SOMA experiment is a folder
        from scmixvae.singlecell.soma import is_soma_experiment

        if is_soma_experiment(args.input):
            from scmixvae.cli_atlas import fit_soma

            return fit_soma(args)
    adata, layer = _read_input(args.input, args.layer)
    _check_keys(adata, layer, args.batch_key, args.labels_key)
    logger.info("read %d cells x %d genes", adata.n_obs, adata.n_vars)

    import scanpy as sc
    import scvi

    from scmixvae import tl
    from scmixvae.io import write_h5ad_atomic

    scvi.settings.seed = args.seed
    training = adata
    if args.n_top_genes:  # train on the variable genes; the output keeps every gene
        sc.pp.highly_variable_genes(
            adata,
            n_top_genes=min(args.n_top_genes, adata.n_vars),
            flavor="seurat_v3",
            layer=layer,
            batch_key=args.batch_key,
        )
        training = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    plan_kwargs = kl_warmup_plan(args)
    start = time.perf_counter()
    model = tl.mixscvi(
        training,
        layer=layer,
        batch_key=args.batch_key,
        labels_key=args.labels_key,
        max_epochs=args.epochs,
        **mixture_options(args),
        diagnostics=args.diagnostics,
        model_kwargs={"objective": args.objective, "n_latent": args.n_latent,
                      "gene_likelihood": args.gene_likelihood},
        train_kwargs={
            "batch_size": args.batch_size,
            "accelerator": args.accelerator,
            "enable_progress_bar": not args.no_progress_bar,
            "plan_kwargs": plan_kwargs,
        },
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if args.model_dir:  # saved first: the steps below cannot lose the training
        model.save(args.model_dir, overwrite=True)
    if training is not adata:
        tl.copy_outputs(training, adata)
    adata.uns["X_mixscvi"]["train_seconds"] = elapsed
    sc.pp.neighbors(adata, use_rep="X_mixscvi", random_state=args.seed)
    sc.tl.leiden(
        adata,
        resolution=args.leiden_resolution,
        random_state=args.seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    sc.tl.umap(adata, random_state=args.seed)
    write_h5ad_atomic(adata, args.output)
    print(
        f"wrote {args.output}: {adata.n_obs} cells x {adata.n_vars} genes "
        f"({training.n_vars} used for training), {model.n_components} components, "
        f"{adata.uns['X_mixscvi']['n_epochs']} epochs in {elapsed:.1f}s, "
        f"{adata.obs['leiden'].nunique()} leiden clusters"
    )
    return 0


def _add_image_parser(subparsers) -> None:
    image = subparsers.add_parser(
        "image",
        help="image VAEs with S mixture components (MNIST / FashionMNIST benchmarks)",
        description="Train and evaluate the method's image benchmarks.",
    )
    image_sub = image.add_subparsers(dest="image_command", required=True)
    t = image_sub.add_parser(
        "train",
        help="train an image mixture VAE",
        description=(
            "Train an image VAE with S encoders and one decoder on binarised MNIST-like data "
            "(first 50,000 training images, dynamically binarised; validation on the last "
            "10,000). Writes config.json, checkpoints/, logs/ and training.json to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument(
        "--arch", choices=["vanilla", "vampprior", "hierarchical", "composite"], default="vanilla"
    )
    t.add_argument(
        "--dataset", choices=["mnist", "fashion_mnist", "binarized_mnist"], default="mnist"
    )
    _add_mixture_options(t, default_components=1)
    t.add_argument("--particles", type=int, default=1, help="draws per component per step")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup-epochs", type=int, default=100, help="linear KL warm-up")
    t.add_argument("--patience", type=int, default=50, help="early-stopping patience (epochs)")
    t.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    t.add_argument("--subset", type=int, default=None, help="use only N images per split")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--accelerator", default="auto")
    t.add_argument(
        "--device-data", action=argparse.BooleanOptionalAction, default=None,
        help="training images on the training device, batches cut there (default; a resumed run "
        "keeps its own); --no-device-data: the host DataLoader of scmixvae 0.2",
    )  # fmt: skip
    t.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="the training loss through torch.compile, uncompiled (and said) where it cannot "
        "(default: off; a resumed run keeps its own)",
    )  # fmt: skip
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last checkpoint (e.g. with more --epochs)",
    )  # fmt: skip
    t.add_argument("--no-progress-bar", action="store_true")
    t.set_defaults(func=_image_train)

    e = image_sub.add_parser(
        "evaluate",
        help="importance-sampled test NLL of a trained image model",
        description=(
            "Estimate the test NLL by importance sampling with the mixture as proposal "
            "(K samples per component). Reports the tight estimator (one log-mean-exp over all "
            "S*K samples) and the method's reference-code estimator (mean of per-component "
            "log-mean-exps), the bound, the JSD and component usage; writes evaluation.json "
            "and evaluation.md into the run directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("run_dir", help="directory written by `scmixvae image train`")
    e.add_argument("--samples", type=int, default=5000, help="importance samples per component")
    e.add_argument("--subset", type=int, default=None, help="evaluate the first N test images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--accelerator", default="auto", help="auto (GPU if any) or cpu")
    e.set_defaults(func=_image_evaluate)


def _image_train(args: argparse.Namespace) -> int:
    from scmixvae.image.training import ImageTrainConfig, train

    config = ImageTrainConfig(
        architecture=args.arch, dataset=args.dataset, n_components=args.n_components,
        objective=args.objective, shared_encoder=args.shared_encoder,
        n_sampled_components=args.n_sampled_components, n_particles=args.particles,
        epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
        patience=args.patience, seed=args.seed, subset=args.subset,
        max_minutes=args.max_minutes, device_data=_run_setting(args, "device_data", default=True),
        compile=_run_setting(args, "compile", default=False),
    )  # fmt: skip
    summary = train(
        config,
        args.out,
        accelerator=args.accelerator,
        progress_bar=not args.no_progress_bar,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    print(
        f"trained {args.arch} S={args.n_components}: {summary['epochs_run']} epochs, "
        f"{summary['seconds_per_epoch']:.1f}s/epoch, best validation -bound "
        f"{summary['best_val_loss']:.2f}; wrote {args.out}"
    )
    return 0


def _run_setting(args: argparse.Namespace, key: str, default: bool) -> bool:
    """A switch as given; unset, a resumed run's own setting, else ``default``."""
    if getattr(args, key) is not None:
        return getattr(args, key)
    if args.resume:
        from scmixvae.image.training import saved_setting

        return saved_setting(args.out, key, default=default)
    return default


def _image_evaluate(args: argparse.Namespace) -> int:
    from scmixvae.image.training import evaluate

    result = evaluate(
        args.run_dir, args.samples, subset=args.subset, seed=args.seed,
        accelerator=args.accelerator,
    )  # fmt: skip
    print(
        f"test NLL {result['nll_mixture']:.2f} (mixture proposal, tight estimator; "
        f"per-component estimator {result['nll_per_component']:.2f}), -bound "
        f"{result['negative_bound']:.2f}, JSD {result['jsd']:.3f}, "
        f"{args.samples} samples/component on {result['n_images']} images"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scmixvae",
        description="Mixture variational posteriors trained with MISELBO.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_fit_parser(subparsers)
    _add_image_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scmixvae`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"scmixvae: error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # str(KeyError) quotes its message: print the message itself
        print(f"scmixvae: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
