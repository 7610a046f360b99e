"""MixSCANVI: scANVI parity at S = 1, weights carried from MixSCVI, predictions and refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch

from scmixvae import MixSCANVI, MixSCVI
from scmixvae.datasets import load_counts
from scmixvae.singlecell.safety import GeneMismatchError

UNLABELED = "Unknown"


@pytest.fixture(scope="module")
def pbmc(data_dir):
    """600 FACS-sorted PBMCs x 300 variable genes; a fifth of the labels hidden."""
    adata = load_counts("sorted_pbmc", data_dir=data_dir)
    rng = np.random.default_rng(1)
    adata = adata[np.sort(rng.choice(adata.n_obs, 600, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=300, flavor="seurat_v3", layer="counts", subset=True
    )
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[rng.random(adata.n_obs) < 0.2] = UNLABELED
    adata.obs["label"] = pd.Categorical(labels)
    adata.obs["batch"] = pd.Categorical(np.where(rng.random(adata.n_obs) < 0.5, "a", "b"))
    return adata


@pytest.fixture(scope="module")
def mixscvi(pbmc):
    scvi.settings.seed = 0
    adata = pbmc.copy()
    MixSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = MixSCVI(adata, n_components=3)
    model.train(max_epochs=8, batch_size=128, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def trained(mixscvi):
    scvi.settings.seed = 0
    model = MixSCANVI.from_scvi_model(mixscvi, UNLABELED, labels_key="label")
    model.train(max_epochs=6, batch_size=128, enable_progress_bar=False)
    return model


def _twin_models(adata, **kwargs):
    """A SCANVI and a MixSCANVI(S = 1) whose every weight is the same."""
    setup = {"labels_key": "label", "unlabeled_category": UNLABELED, "layer": "counts"}
    scvi.model.SCANVI.setup_anndata(adata, batch_key="batch", **setup)
    ref = scvi.model.SCANVI(adata, **kwargs)
    MixSCANVI.setup_anndata(adata, batch_key="batch", **setup)
    mix = MixSCANVI(adata, n_components=1, **kwargs)
    shared = {k: v for k, v in ref.module.state_dict().items() if not k.startswith("z_encoder")}
    result = mix.module.load_state_dict(shared, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("z_encoder") for k in result.missing_keys)
    mix.module.z_encoder.load_component_(0, ref.module.z_encoder)
    return ref, mix


@pytest.mark.parametrize("gene_likelihood", ["zinb", "nb"])
@pytest.mark.parametrize("use_observed_lib_size", [True, False])
def test_single_component_loss_is_scanvi_loss(pbmc, gene_likelihood, use_observed_lib_size):
    adata = pbmc[:256].copy()
    ref, mix = _twin_models(
        adata, gene_likelihood=gene_likelihood, use_observed_lib_size=use_observed_lib_size
    )
    tensors = next(iter(ref._make_data_loader(adata, batch_size=128)))
    labelled = next(iter(ref._make_data_loader(adata, indices=ref._labeled_indices[:64])))
    loss_kwargs = {"kl_weight": 0.6, "labelled_tensors": labelled, "classification_ratio": 50}
    for training in (True, False):
        ref.module.train(training)
        mix.module.train(training)
        torch.manual_seed(11)
        _, _, expected = ref.module(tensors, loss_kwargs=loss_kwargs)
        torch.manual_seed(11)
        _, _, got = mix.module(tensors, loss_kwargs=loss_kwargs)
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(got.classification_loss, expected.classification_loss)
        for key in ("reconstruction_loss", "kl_local"):
            theirs = getattr(expected, key)[key]
            torch.testing.assert_close(getattr(got, key)[key], theirs, rtol=1e-5, atol=1e-3)


def test_single_component_predictions_are_scanvi_predictions(pbmc):
    adata = pbmc[:256].copy()
    ref, mix = _twin_models(adata)
    for model in (ref, mix):
        model.is_trained_ = True
        model.module.eval()  # scvi-tools' predict leaves the mode as it finds it
    expected = ref.predict(soft=True)
    got = mix.predict(soft=True)
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mix.predict(), ref.predict())
