"""The `scmixvae fit` command: outputs, no silent overwrite, help."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

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


def test_both_commands_spell_the_mixture_options_alike():
    from scmixvae.cli import OBJECTIVE_CHOICES, build_parser
    from scmixvae.mixture import OBJECTIVES

    assert OBJECTIVE_CHOICES == OBJECTIVES
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


def test_bad_inputs_exit_with_a_message(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.h5ad"), str(tmp_path / "o.h5ad")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fit", "not_a_dataset", str(tmp_path / "o.h5ad")]) == 2
    assert "dataset name" in capsys.readouterr().err


def test_help_documents_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "scmixvae.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--n-components", "--layer", "--batch-key", "--epochs", "--model-dir"):
        assert option in result.stdout
