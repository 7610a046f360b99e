"""MixSCANVI: scANVI parity at S = 1, weights carried from MixSCVI, predictions and refusals."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "options", [{}, {"shared_encoder": True, "n_sampled_components": 2, "n_components": 4}]
)
def test_from_scvi_model_carries_every_weight_and_setting(pbmc, options):
    adata = pbmc[:300].copy()
    MixSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    source = MixSCVI(adata, **{"n_components": 3, **options})
    source.train(max_epochs=1, enable_progress_bar=False)
    model = MixSCANVI.from_scvi_model(source, UNLABELED, labels_key="label")
    assert model.n_components == source.n_components
    assert type(model.module.z_encoder) is type(source.module.z_encoder)
    assert model.module.n_sampled_components == source.module.n_sampled_components
    target = model.module.state_dict()
    for key, value in source.module.state_dict().items():
        assert torch.equal(target[key], value), key
    tensors = next(iter(source._make_data_loader(adata, batch_size=64)))
    x, batch = tensors["X"], tensors["batch"]
    source.module.eval()
    model.module.eval()
    with torch.inference_mode():
        expected = source.module._encode(x, batch)[0].component_loc
        torch.testing.assert_close(model.module._encode(x, batch)[0].component_loc, expected)


def test_scanvi_refuses_a_mixscvi_and_names_the_way(mixscvi):
    with pytest.raises(TypeError, match=r"MixSCANVI\.from_scvi_model"):
        scvi.model.SCANVI.from_scvi_model(mixscvi, UNLABELED, labels_key="label")


def test_bad_references_and_labels_get_one_line_errors(pbmc, mixscvi):
    adata = pbmc[:200].copy()
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    plain = scvi.model.SCVI(adata)
    with pytest.raises(TypeError, match=r"needs a scmixvae\.MixSCVI"):
        MixSCANVI.from_scvi_model(plain, UNLABELED, labels_key="label")
    MixSCVI.setup_anndata(adata, layer="counts")
    untrained = MixSCVI(adata, n_components=2)
    with pytest.warns(UserWarning, match="hasn't been trained"):  # as SCANVI: warn, convert
        converted = MixSCANVI.from_scvi_model(untrained, UNLABELED, labels_key="label")
    assert converted.n_components == 2 and not converted.is_trained
    with pytest.raises(KeyError, match=r"'missing' is not in adata\.obs"):
        MixSCANVI.from_scvi_model(mixscvi, UNLABELED, labels_key="missing")
    only_unlabeled = mixscvi.adata.copy()
    only_unlabeled.obs["none"] = UNLABELED
    with pytest.raises(ValueError, match="only the unlabeled category"):
        MixSCANVI.from_scvi_model(mixscvi, UNLABELED, labels_key="none", adata=only_unlabeled)
    with pytest.raises(ValueError, match="pass unlabeled_category='Unknown'"):
        MixSCANVI.from_scvi_model(mixscvi, "unknown", labels_key="label")


def test_predictions_are_the_mixture_predictive_with_its_uncertainty(trained):
    components = trained.get_component_label_probabilities()
    assert components.shape == (3, trained.adata.n_obs, trained.n_labels)
    np.testing.assert_allclose(components.sum(-1), 1.0, rtol=1e-5)
    probs, uncertainty = trained.predict(soft=True, return_uncertainty=True)
    np.testing.assert_allclose(probs.to_numpy(), components.mean(0), rtol=1e-5, atol=1e-7)
    assert list(probs.index) == list(trained.adata.obs_names)
    assert UNLABELED not in probs.columns
    np.testing.assert_allclose(uncertainty["confidence"], probs.max(1), rtol=1e-5)
    total = uncertainty["disagreement"] + uncertainty["expected_entropy"]
    np.testing.assert_allclose(uncertainty["entropy"], total, atol=1e-6)
    assert (uncertainty["disagreement"] > 0).mean() > 0.5  # the components do differ
    hard = trained.predict()
    np.testing.assert_array_equal(hard, probs.columns.to_numpy()[probs.to_numpy().argmax(1)])
    torch.manual_seed(0)
    drawn = trained.predict(soft=True, use_posterior_mean=False, n_samples=4)
    assert not np.allclose(drawn.to_numpy(), probs.to_numpy())
    labelled = trained.adata.obs["label"].astype(str) != UNLABELED
    accuracy = (hard[labelled] == trained.adata.obs["label"].astype(str)[labelled]).mean()
    assert accuracy > 0.5  # trained, not a stub: 4 sorted populations after 6 epochs


def test_save_load_round_trip_keeps_predictions(trained, tmp_path):
    trained.save(tmp_path / "model")
    loaded = MixSCANVI.load(tmp_path / "model", adata=trained.adata)
    np.testing.assert_allclose(
        loaded.predict(soft=True).to_numpy(), trained.predict(soft=True).to_numpy(), rtol=1e-6
    )
    wrong = trained.adata[:, ::-1].copy()
    with pytest.raises(GeneMismatchError):
        MixSCANVI.load(tmp_path / "model", adata=wrong)


def test_marginal_ll_uses_scanvis_hierarchical_prior(trained):
    module = trained.module
    z = torch.randn(3, 64, module.n_latent)
    with torch.inference_mode():
        log_prior = module.latent_log_prior(z)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert log_prior.shape == (3, 64) and torch.isfinite(log_prior).all()
    assert not torch.allclose(log_prior, standard)
    ll = trained.get_marginal_ll(n_mc_samples=30, return_mean=False)
    assert np.isfinite(np.asarray(ll)).all() and len(ll) == trained.adata.n_obs
    # importance sampling with the hierarchical prior: above the bound, as log p(x) must be
    assert np.mean(np.asarray(ll)) > trained.get_elbo() - 1.0


@pytest.fixture(scope="module")
def query(pbmc, data_dir):
    """300 other sorted PBMCs on the reference's genes, in a new batch."""
    full = load_counts("sorted_pbmc", data_dir=data_dir)
    others = full.obs_names.difference(pbmc.obs_names)
    rng = np.random.default_rng(2)
    adata = full[np.sort(rng.choice(others, 300, replace=False)), pbmc.var_names].copy()
    adata.obs["batch"] = pd.Categorical(["query"] * adata.n_obs)
    return adata


@pytest.mark.parametrize("route", ["mixscanvi", "mixscvi"])
def test_label_transfer_writes_labels_uncertainty_and_a_measured_unknown_flag(
    route, trained, mixscvi, query, tmp_path
):
    import scmixvae

    reference = trained if route == "mixscanvi" else mixscvi
    if route == "mixscvi":  # the kNN route reads the reference's labels
        with pytest.raises(ValueError, match="set up without labels_key"):
            scmixvae.tl.label_transfer(mixscvi, query.copy())
        adata = mixscvi.adata.copy()
        MixSCVI.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="label")
        reference = MixSCVI(adata, n_components=3)
        reference.module.load_state_dict(mixscvi.module.state_dict())
        reference.train(max_epochs=1, enable_progress_bar=False)
    adata = query.copy()
    model = scmixvae.tl.label_transfer(
        reference, adata, max_epochs=2, key_added="lt", unlabeled_category=UNLABELED
    )
    obs = adata.obs
    for column in ("lt_label", "lt_confidence", "lt_uncertainty", "lt_unknown"):
        assert column in obs
    extra = "lt_disagreement" if route == "mixscanvi" else "lt_posterior_uncertainty"
    assert extra in obs and np.isfinite(obs[extra]).all()
    assert adata.obsm["X_lt"].shape == (adata.n_obs, 10)
    np.testing.assert_allclose(obs["lt_confidence"] + obs["lt_uncertainty"], 1.0)
    info = adata.uns["lt"]
    assert info["route"] == ("classifier" if route == "mixscanvi" else "knn")
    np.testing.assert_array_equal(obs["lt_unknown"], obs["lt_uncertainty"] > info["threshold"])
    assert set(obs["lt_label"].cat.categories) <= set(info["labels"])
    assert UNLABELED not in info["labels"]
    # the labels are mostly right: four sorted populations, and a real mapping
    assert (obs["lt_label"].astype(str) == obs["cell_type"].astype(str)).mean() > 0.4
    assert type(model) is type(reference)
    scmixvae.pl.label_transfer(adata, key="lt", basis="lt", save=tmp_path / "lt.png")
    assert (tmp_path / "lt.png").stat().st_size > 10_000


def test_label_transfer_refuses_other_genes_and_writes_nothing(trained, query):
    import scmixvae

    adata = query[:, ::-1].copy()
    with pytest.raises(GeneMismatchError, match="do not match the reference model's genes"):
        scmixvae.tl.label_transfer(trained, adata, max_epochs=1)
    assert not any(c.startswith("label_transfer") for c in adata.obs)
    untrained = MixSCANVI.from_scvi_model(trained_mixscvi_copy(trained), UNLABELED)
    with pytest.raises(RuntimeError, match="untrained"):
        scmixvae.tl.label_transfer(untrained, query.copy(), max_epochs=1)


def trained_mixscvi_copy(model: MixSCANVI) -> MixSCVI:
    """A trained MixSCVI on ``model``'s AnnData (for building an untrained MixSCANVI)."""
    adata = model.adata.copy()
    MixSCVI.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="label")
    source = MixSCVI(adata, n_components=2)
    source.is_trained_ = True
    return source
