"""The `scmixvae fit` command: outputs, no silent overwrite, help."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from scmixvae.cli import main
from scmixvae.datasets import load_counts


@pytest.fixture(scope="module")
def small_h5ad(data_dir, tmp_path_factory):
    adata = load_counts("sorted_pbmc", data_dir=data_dir)
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 300, replace=False)].copy()
    sc.pp.filter_genes(adata, min_cells=5)
    path = tmp_path_factory.mktemp("cli") / "small.h5ad"
    adata[:, :300].copy().write_h5ad(path)
    return path


def test_fit_writes_embedding_clusters_and_umap(small_h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    model_dir = str(tmp_path / "model")
    args = ["fit", str(small_h5ad), str(out), "--layer", "counts", "--n-components", "2",
            "--epochs", "2", "--no-progress-bar", "--model-dir", model_dir]  # fmt: skip
    assert main(args) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_mixscvi"].shape == (300, 10)
    assert result.obsm["X_umap"].shape == (300, 2)
    assert result.obs["leiden"].nunique() >= 1
    assert result.uns["X_mixscvi"]["params"]["n_components"] == 2
    assert (tmp_path / "model" / "model.pt").is_file()
    assert "wrote" in capsys.readouterr().out
    assert not list(tmp_path.glob(".out.h5ad.*"))  # no temporary file left behind

    before = out.stat().st_mtime_ns
    assert main(args) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before


def test_fit_trains_a_shared_encoder_with_sampled_components(small_h5ad, tmp_path):
    out = tmp_path / "shared.h5ad"
    args = ["fit", str(small_h5ad), str(out), "--layer", "counts", "--components", "30",
            "--shared-encoder", "--sampled-components", "2", "--epochs", "2",
            "--no-progress-bar", "--model-dir", str(tmp_path / "model")]  # fmt: skip
    assert main(args) == 0
    params = ad.read_h5ad(out).uns["X_mixscvi"]["params"]
    assert params["n_components"] == 30 and params["shared_encoder"]
    assert params["n_sampled_components"] == 2


def test_fit_trains_the_composite_recipe(small_h5ad, tmp_path):
    out = tmp_path / "composite.h5ad"
    args = ["fit", str(small_h5ad), str(out), "--layer", "counts", "--components", "2",
            "--prior", "vamp", "--n-prior-components", "3", "--flow-steps", "1",
            "--epochs", "2", "--no-progress-bar"]  # fmt: skip
    assert main(args) == 0
    params = ad.read_h5ad(out).uns["X_mixscvi"]["params"]
    assert params["prior"] == "vamp" and params["flow_steps"] == 1
    assert params["n_prior_components"] == 3


def test_both_commands_spell_the_mixture_options_alike():
    from scmixvae.cli import DEFAULT_N_PRIOR_COMPONENTS, OBJECTIVE_CHOICES, build_parser
    from scmixvae.mixture import OBJECTIVES
    from scmixvae.singlecell import module_priors

    assert OBJECTIVE_CHOICES == OBJECTIVES
    assert DEFAULT_N_PRIOR_COMPONENTS == module_priors.DEFAULT_N_PRIOR_COMPONENTS
    parser = build_parser()
    for command in (["fit", "in.h5ad", "out.h5ad"], ["image", "train", "--out", "o"]):
        for spelling in ("--n-components", "--components"):
            args = parser.parse_args([*command, spelling, "7", "--shared-encoder",
                                      "--sampled-components", "3"])  # fmt: skip
            assert (args.n_components, args.shared_encoder, args.n_sampled_components) == (
                7,
                True,
                3,
            )


def test_bad_inputs_exit_with_a_message(small_h5ad, tmp_path, capsys):
    out = str(tmp_path / "o.h5ad")
    cases = [
        (["fit", str(tmp_path / "missing.h5ad"), out], "does not exist"),
        (["fit", "not_a_dataset", out], "dataset name"),
        (["fit", str(small_h5ad), out, "--epochs", "0"], "--epochs must be at least 1"),
        (["fit", str(small_h5ad), out, "--n-components", "0"], "--n-components must be"),
        (["fit", str(small_h5ad), out, "--layer", "raw"], "layers: ['counts']"),
        (["fit", str(small_h5ad), out, "--layer", "counts", "--batch-key", "donor"],
         "--batch-key 'donor' is not a column"),
        (["fit", str(small_h5ad), out, "--n-prior-components", "0"],
         "--n-prior-components must be at least 1"),
        (["fit", str(small_h5ad), out, "--flow-steps", "-1"], "--flow-steps must be at least 0"),
        (["fit", str(small_h5ad), out, "--layer", "counts", "--prior", "vamp",
          "--n-prior-components", "301"], "exceeds the 300 registered cells"),
    ]  # fmt: skip
    not_hdf5 = tmp_path / "text.h5ad"
    not_hdf5.write_text("cell,gene\n")
    cases.append((["fit", str(not_hdf5), out], "no HDF5 signature"))
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err  # one line, no traceback
    assert not (tmp_path / "o.h5ad").exists()


def test_fit_on_ten_thousand_cells_keeps_every_gene(tmp_path, capsys):
    """From 8,192 cells on scanpy's kNN takes the pynndescent path that once crashed."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 10_000, 300
    counts = rng.poisson(rng.gamma(0.5, 2.0, size=n_genes), size=(n_cells, n_genes))
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.write_h5ad(tmp_path / "big.h5ad")
    out, model_dir = tmp_path / "big_out.h5ad", tmp_path / "model"
    args = ["fit", str(tmp_path / "big.h5ad"), str(out), "--n-top-genes", "100",
            "--n-components", "2", "--epochs", "1", "--batch-size", "512",
            "--no-progress-bar", "--model-dir", str(model_dir)]  # fmt: skip
    old_umask = os.umask(0o022)
    try:
        assert main(args) == 0
    finally:
        os.umask(old_umask)
    result = ad.read_h5ad(out)
    assert result.shape == (n_cells, n_genes)  # every gene kept, the trained ones flagged
    assert result.var["highly_variable"].sum() == 100
    assert result.obsm["X_mixscvi"].shape == (n_cells, 10)
    assert result.obsm["X_umap"].shape == (n_cells, 2)
    assert result.obs["X_mixscvi_component"].dtype == "category"
    assert (out.stat().st_mode & 0o777) == 0o644  # the user's umask, not mkstemp's 0600
    assert (model_dir / "model.pt").is_file()
    assert "300 genes (100 used for training)" in capsys.readouterr().out


def test_help_documents_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "scmixvae.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--n-components", "--layer", "--batch-key", "--epochs", "--model-dir"):
        assert option in result.stdout
