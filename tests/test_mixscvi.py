"""MixSCVI on real counts: scVI parity at S = 1, the mixture outputs, save/load, scanpy flow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scanpy as sc
import scvi
import torch

import scmixvae
from scmixvae import MixSCVI
from scmixvae.datasets import load_counts
from scmixvae.mixture import bound, jsd


@pytest.fixture(scope="module")
def pbmc(data_dir):
    """800 FACS-sorted PBMCs x 400 highly variable genes, raw counts in layers['counts']."""
    adata = load_counts("sorted_pbmc", data_dir=data_dir)
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 800, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=400, flavor="seurat_v3", layer="counts", subset=True
    )
    return adata


@pytest.fixture(scope="module")
def trained(pbmc):
    scvi.settings.seed = 0
    adata = pbmc.copy()
    MixSCVI.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = MixSCVI(adata, n_components=3)
    model.train(max_epochs=15, batch_size=128, enable_progress_bar=False)
    return model


def _twin_models(adata, n_components=1, **kwargs):
    """An SCVI and a MixSCVI whose every weight is the same."""
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    ref = scvi.model.SCVI(adata, **kwargs)
    MixSCVI.setup_anndata(adata, layer="counts")
    mix = MixSCVI(adata, n_components=n_components, **kwargs)
    shared = {k: v for k, v in ref.module.state_dict().items() if not k.startswith("z_encoder")}
    result = mix.module.load_state_dict(shared, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("z_encoder") for k in result.missing_keys)
    for k in range(n_components):
        mix.module.z_encoder.load_component_(k, ref.module.z_encoder)
    return ref, mix


@pytest.mark.parametrize("gene_likelihood", ["zinb", "nb", "poisson"])
@pytest.mark.parametrize("use_observed_lib_size", [True, False])
def test_single_component_loss_is_scvi_loss(pbmc, gene_likelihood, use_observed_lib_size):
    adata = pbmc[:256].copy()
    ref, mix = _twin_models(
        adata, gene_likelihood=gene_likelihood, use_observed_lib_size=use_observed_lib_size
    )
    tensors = next(iter(ref._make_data_loader(adata, batch_size=128)))
    for training in (True, False):
        ref.module.train(training)
        mix.module.train(training)
        torch.manual_seed(11)
        _, _, expected = ref.module(tensors, loss_kwargs={"kl_weight": 0.6})
        torch.manual_seed(11)
        _, _, got = mix.module(tensors, loss_kwargs={"kl_weight": 0.6})
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(
            got.reconstruction_loss["reconstruction_loss"],
            expected.reconstruction_loss["reconstruction_loss"],
        )


def test_single_component_training_follows_scvi(pbmc):
    """From the same weights, S = 1 trains along scVI's trajectory: same optimiser, same data
    order, same validation bound, so early stopping sees the same numbers (benchmark runs of
    the two differ only by their initial weights)."""
    adata = pbmc.copy()
    ref, mix = _twin_models(adata)
    split = np.random.default_rng(0).permutation(adata.n_obs)
    split = [np.sort(split[:560]), np.sort(split[560:640]), np.sort(split[640:])]
    histories = []
    for model in (ref, mix):
        scvi.settings.seed = 5
        model.train(
            max_epochs=6,
            batch_size=128,
            plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": 3},
            early_stopping=True,
            early_stopping_patience=50,
            datasplitter_kwargs={"external_indexing": split},
            enable_progress_bar=False,
        )
        histories.append(model.history)
    for key in ("elbo_validation", "reconstruction_loss_validation", "elbo_train", "train_loss"):
        expected, got = (h[key][key].to_numpy(dtype=float) for h in histories)
        assert len(got) == 6
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # and the training did move: not a comparison of two untouched models
    assert histories[0]["elbo_validation"]["elbo_validation"].iloc[-1] < (
        histories[0]["elbo_validation"]["elbo_validation"].iloc[0] - 5
    )


def test_single_component_marginal_ll_agrees_with_scvi(pbmc):
    adata = pbmc[:200].copy()
    ref, mix = _twin_models(adata)
    ref.is_trained_ = mix.is_trained_ = True
    ref.module.eval()
    ours = mix.get_marginal_ll(adata, n_mc_samples=400, return_mean=False).numpy()
    again = mix.get_marginal_ll(adata, n_mc_samples=400, return_mean=False).numpy()
    theirs = ref.get_marginal_ll(adata, n_mc_samples=400, return_mean=False).numpy()
    assert np.isfinite(ours).all()
    # an untrained proposal makes every estimate noisy: ours differs from scvi-tools' exactly as
    # much as from a second run of itself, and without bias
    diff, noise = ours - theirs, ours - again
    assert abs(diff.mean()) < 3 * noise.std() / np.sqrt(len(diff))
    assert 0.75 < diff.std() / noise.std() < 1.33
    # the mean is over cells (200 cells = minibatches of 128 + 72), not over minibatch means
    torch.manual_seed(3)
    per_cell = mix.get_marginal_ll(adata, n_mc_samples=400, return_mean=False)
    torch.manual_seed(3)
    assert mix.get_marginal_ll(adata, n_mc_samples=400) == pytest.approx(float(per_cell.mean()))


def test_trained_mixture_outputs(trained):
    adata = trained.adata
    z = trained.get_latent_representation()
    assert z.shape == (adata.n_obs, 10) and np.isfinite(z).all()
    per_component = trained.get_latent_representation(component="all")
    assert per_component.shape == (adata.n_obs, 3, 10)
    np.testing.assert_allclose(per_component.mean(1), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.get_latent_representation(component=2), per_component[:, 2])
    _, var = trained.get_latent_representation(return_dist=True)
    comp_var = trained.get_latent_representation(component="all", return_dist=True)[1]
    # law of total variance: mixture variance >= mean within-component variance
    assert (var >= comp_var.mean(1) - 1e-6).all()
    with pytest.raises(ValueError, match="component"):
        trained.get_latent_representation(component=3)

    resp = trained.get_component_responsibilities(n_samples_per_component=5)
    assert resp.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(resp.sum(1), 1.0, rtol=1e-5)
    uncertainty = trained.get_posterior_uncertainty()
    np.testing.assert_allclose(uncertainty, var.sum(1), rtol=1e-5)
    jsd = trained.get_component_divergence()
    assert (jsd > 0).all() and (jsd < np.log(3)).all()

    ll = trained.get_marginal_ll(n_mc_samples=60)
    assert np.isfinite(ll)
    assert ll > float(trained.get_elbo())  # the IS estimate tightens the bound
    assert "3 mixture components" in repr(trained) and "miselbo" in repr(trained)
    assert trained.get_normalized_expression(n_samples=2).shape == (adata.n_obs, adata.n_vars)
    de = trained.differential_expression(groupby="cell_type", group1="bcells")
    assert len(de) == adata.n_vars and np.isfinite(de["bayes_factor"]).all()


def test_miselbo_exceeds_mean_component_elbo_on_trained_model(trained):
    module = trained.module.eval()
    tensors = next(iter(trained._make_data_loader(trained.adata, batch_size=256)))
    with torch.no_grad():
        inference, generative = module.forward(
            tensors, inference_kwargs={"n_samples": 20, "stratified": True}, compute_loss=False
        )
    terms = module.draw_terms(tensors, inference, generative)
    assert terms.log_px_z.shape == (20, 3, 256)
    # on the same draws (Monte Carlo KL for both) the gap is exactly the JSD
    mc = dataclasses.replace(terms, kl_own=None)
    mis, ens = bound(mc, "miselbo"), bound(mc, "ensemble")
    torch.testing.assert_close(mis - ens, jsd(terms), atol=1e-4, rtol=1e-4)
    assert (mis - ens).mean() > 0.01
    # the closed-form KL of the ensemble bound only removes Monte Carlo noise
    assert abs(float((bound(terms, "ensemble") - ens).mean())) < 0.1


def test_training_decreased_the_loss_and_logged_the_divergence(trained):
    loss = trained.history["train_loss"].to_numpy().astype(float).ravel()
    assert loss[-1] < loss[0]
    assert "jsd_train" in trained.history


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "model", save_anndata=False)
    loaded = MixSCVI.load(tmp_path / "model", adata=trained.adata)
    assert loaded.n_components == 3 and loaded.module.objective == "miselbo"
    np.testing.assert_array_equal(
        loaded.get_latent_representation(component="all"),
        trained.get_latent_representation(component="all"),
    )


def test_scanpy_workflow_on_the_latent(trained):
    adata = trained.adata.copy()
    scmixvae.tl.store_outputs(trained, adata)
    sc.pp.neighbors(adata, use_rep="X_mixscvi")
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False)
    sc.tl.umap(adata)
    assert adata.obs["leiden"].nunique() > 1
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert adata.obsm["X_mixscvi_responsibilities"].shape == (adata.n_obs, 3)
    assert adata.uns["X_mixscvi"]["params"]["n_components"] == 3
    # the latent separates sorted populations: leiden agrees with the sorting gate
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.2


def test_ensemble_components_never_see_each_other(pbmc):
    adata = pbmc[:128].copy()
    MixSCVI.setup_anndata(adata, layer="counts")
    tensors = next(iter(MixSCVI(adata, n_components=2)._make_data_loader(adata, batch_size=128)))

    def component0_grad(objective, perturb):
        torch.manual_seed(0)  # same weights and draws for every call
        model = MixSCVI(adata, n_components=2, objective=objective, use_batch_norm="none",
                        dropout_rate=0.0)  # fmt: skip
        enc = model.module.z_encoder
        with torch.no_grad():  # start component 1 on top of component 0: maximal interaction
            for p in enc.parameters():
                p[1] = p[0] + perturb
        torch.manual_seed(1)
        _, _, loss = model.module(tensors)
        loss.loss.backward()
        return enc.mean_encoder.weight.grad[0].clone()

    ens_a, ens_b = component0_grad("ensemble", 0.0), component0_grad("ensemble", 0.3)
    torch.testing.assert_close(ens_a, ens_b)
    mis_a, mis_b = component0_grad("miselbo", 0.0), component0_grad("miselbo", 0.3)
    assert not torch.allclose(mis_a, mis_b, atol=1e-4)


def test_batch_covariate_changes_the_decoder(data_dir):
    adata = load_counts("kang_ifnb", data_dir=data_dir)
    rng = np.random.default_rng(1)
    adata = adata[np.sort(rng.choice(adata.n_obs, 600, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=5)
    adata = adata[:, :300].copy()
    MixSCVI.setup_anndata(adata, layer="counts", batch_key="condition")
    model = MixSCVI(adata, n_components=2)
    model.train(max_epochs=2, enable_progress_bar=False)
    assert model.summary_stats.n_batch == 2
    ctrl = model.get_normalized_expression(transform_batch="ctrl", return_numpy=True)
    stim = model.get_normalized_expression(transform_batch="stim", return_numpy=True)
    assert np.abs(ctrl - stim).max() > 1e-4
    assert np.isfinite(model.get_latent_representation()).all()


def test_invalid_model_arguments_are_named(pbmc):
    adata = pbmc[:50].copy()
    MixSCVI.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match="n_components"):
        MixSCVI(adata, n_components=0)
    with pytest.raises(ValueError, match="objective"):
        MixSCVI(adata, objective="elbo")
    with pytest.raises(KeyError, match="layer"):
        MixSCVI.setup_anndata(adata, layer="missing")
    with pytest.raises(KeyError, match="batch"):
        MixSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
