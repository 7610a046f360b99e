"""MixSCVI's cookbook recipes on real counts: VampPrior, Gaussian-mixture prior, latent flow.

Every consumer of the prior is checked to use the model's own prior (each test fails if it fell
back to N(0, I)), and the flow's densities, latents, save/load, minification and query mapping.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scvi.data import synthetic_iid

from scmixvae import MixSCANVI, MixSCVI
from scmixvae.datasets import load_counts
from scmixvae.mixture import StandardNormalPrior
from scmixvae.singlecell.module_priors import BASE_Z_KEY, LOG_DET_KEY, UNTRANSFORMED_Z_KEY

TRAIN = {"batch_size": 128, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def pbmc(data_dir):
    """500 FACS-sorted PBMCs x 300 highly variable genes, raw counts in layers['counts']."""
    adata = load_counts("sorted_pbmc", data_dir=data_dir)
    rng = np.random.default_rng(1)
    adata = adata[np.sort(rng.choice(adata.n_obs, 500, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=300, flavor="seurat_v3", layer="counts", subset=True
    )
    MixSCVI.setup_anndata(adata, layer="counts", labels_key="cell_type")
    return adata


def _trained(adata, epochs: int = 4, **kwargs) -> MixSCVI:
    scvi.settings.seed = 0
    model = MixSCVI(adata, **{"n_components": 3, **kwargs})
    model.train(max_epochs=epochs, **TRAIN)
    return model


@pytest.fixture(scope="module")
def composite(pbmc):
    """The composite recipe: a VampPrior and a two-step flow, S = 3."""
    return _trained(pbmc, prior="vamp", n_prior_components=4, flow_steps=2)


def _with_standard_normal(model, fn):
    """``fn()`` with the model's prior swapped for N(0, I), the same random stream."""
    prior = model.module.prior
    model.module.prior = StandardNormalPrior(model.module.n_latent)
    try:
        torch.manual_seed(0)
        return fn()
    finally:
        model.module.prior = prior


def test_pseudo_inputs_start_on_the_chosen_cells(pbmc):
    cells = [3, 10, 42]
    model = MixSCVI(pbmc, n_components=2, prior="vamp", pseudoinputs_data_indices=cells)
    counts = pbmc.layers["counts"][cells]
    counts = counts.toarray() if hasattr(counts, "toarray") else counts
    expected = torch.log1p(torch.as_tensor(np.asarray(counts), dtype=torch.float32))
    torch.testing.assert_close(model.module.prior.pseudo_inputs.detach(), expected)
    assert model.module.prior.n_prior_components == 3
    # the same seed chooses the same cells, and no draw is taken from torch's stream
    scvi.settings.seed = 5
    a = MixSCVI(pbmc, n_components=2, prior="vamp").module.prior.pseudo_inputs
    scvi.settings.seed = 5
    b = MixSCVI(pbmc, n_components=2, prior="vamp").module.prior.pseudo_inputs
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_every_bound_and_estimate_uses_the_models_prior(pbmc, prior):
    model = _trained(pbmc, epochs=2, prior=prior)
    indices = np.arange(40)

    def elbo():
        torch.manual_seed(0)
        return float(model.get_elbo(indices=indices))

    def marginal_ll():
        torch.manual_seed(0)
        return float(model.get_marginal_ll(indices=indices, n_mc_samples=30))

    for estimate in (elbo, marginal_ll):
        assert estimate() != pytest.approx(_with_standard_normal(model, estimate), abs=1e-3)
    # the training loss: the KL is the Monte Carlo one against this prior
    tensors = next(iter(model._make_data_loader(model.adata, indices=indices)))
    model.module.train()
    torch.manual_seed(0)
    loss = model.module(tensors)[2].loss
    assert float(loss) != pytest.approx(
        float(_with_standard_normal(model, lambda: model.module(tensors)[2].loss)), abs=1e-3
    )
    model.module.eval()


def test_importance_weights_for_de_use_the_prior_and_the_flow(composite):
    indices = np.arange(30)
    zs = torch.randn(20, 10)

    def weights():
        np.random.seed(0)  # noqa: NPY002  (the anchors are drawn from numpy's global stream)
        torch.manual_seed(0)
        return composite.get_importance_weights(
            composite.adata, indices, zs=zs, n_mc_samples=20, n_mc_samples_per_pass=20,
            px=_px_at(composite, zs),
        )  # fmt: skip

    w = weights()
    assert w.shape == (20,) and np.isclose(w.sum(), 1.0)
    assert not np.allclose(w, _with_standard_normal(composite, weights))
    flow, composite.module.flow = composite.module.flow, None
    try:  # the anchors' densities of flowed draws go through the flow's inverse
        assert not np.allclose(w, weights())
    finally:
        composite.module.flow = flow
    # scvi-tools' DE reaches these weights (few anchors and samples: a path check)
    de = composite.differential_expression(
        idx1=np.arange(0, 20), idx2=np.arange(20, 40), weights="importance", batch_size=64,
        all_stats=False, importance_weighting_kwargs={"n_mc_samples": 10, "max_cells": 20},
    )  # fmt: skip
    assert len(de) == composite.adata.n_vars and np.isfinite(de["bayes_factor"]).all()


def _px_at(model, zs):
    """The decoder's expression distribution at latent draws ``zs [N, D]``."""
    module = model.module
    library = torch.zeros(zs.shape[0], 1)
    batch = torch.zeros(zs.shape[0], 1)
    with torch.no_grad():
        return module.generative(zs, library, batch)["px"]


def test_flow_densities_and_latents(composite, pbmc):
    module = composite.module
    tensors = next(iter(composite._make_data_loader(pbmc, indices=np.arange(16))))
    module.eval()
    with torch.no_grad():
        out, _ = module.forward(tensors, inference_kwargs={"n_samples": 2}, compute_loss=False)
        inputs = module._get_inference_input(tensors)
        stratified = module.inference(**inputs, n_samples=2, stratified=True)
    assert out["z"].shape == (2, 16, 10)
    base, z, log_det = (stratified[k] for k in (BASE_Z_KEY, UNTRANSFORMED_Z_KEY, LOG_DET_KEY))
    flowed, expected_log_det = module.flow(base)
    torch.testing.assert_close(z, flowed)
    torch.testing.assert_close(log_det, expected_log_det)
    # the mixture density of a flowed draw is the base density less the log-determinant
    tensors_terms = module.posterior_terms(
        stratified, log_px_z=torch.zeros_like(log_det), log_pz=torch.zeros_like(log_det)
    )
    qz = stratified["qz"]
    torch.testing.assert_close(tensors_terms.log_q_mix, qz.log_prob(base) - log_det)
    # the latent: the flow at the mixture mean; component means: the flow at each mean
    latent = composite.get_latent_representation(indices=np.arange(16))
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(latent), module.flow(qz.loc)[0])
    every = composite.get_latent_representation(indices=np.arange(16), component="all")
    torch.testing.assert_close(
        torch.as_tensor(every[:, 1]), module.flow(qz.component_loc[1])[0].detach()
    )


def test_aggregated_posterior_is_the_flowed_mixture(composite):
    indices = np.arange(20)
    aggregated = composite.get_aggregated_posterior(indices=indices)
    z = torch.as_tensor(composite.get_latent_representation(indices=indices[:5]))
    loc, var = composite._base_components(indices=indices)
    loc, scale = torch.as_tensor(loc).reshape(-1, 10), torch.as_tensor(var).reshape(-1, 10).sqrt()
    with torch.no_grad():
        z0, log_det = composite.module.flow.inverse(z)
        base = torch.distributions.Normal(loc, scale).log_prob(z0[:, None]).sum(-1)
        expected = torch.logsumexp(base, 1) - np.log(loc.shape[0]) - log_det
        torch.testing.assert_close(aggregated.log_prob(z), expected, atol=1e-4, rtol=1e-4)
    # scvi-tools' differential abundance runs on it
    subset = composite.adata[:120].copy()
    composite.differential_abundance(subset, sample_key="cell_type", num_cells_posterior=20)
    assert np.isfinite(subset.obsm["da_log_probs"].to_numpy()).all()


def test_save_load_and_minify_keep_the_recipe(composite, pbmc, tmp_path):
    composite.save(tmp_path / "model", overwrite=True)
    subset = pbmc[:100].copy()  # fewer cells than the pseudo-input indices may name
    loaded = MixSCVI.load(str(tmp_path / "model"), adata=subset)
    for key, value in composite.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value, msg=key)
    np.testing.assert_allclose(
        loaded.get_latent_representation(subset),
        composite.get_latent_representation(subset),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    # a VampPrior model whose saved weights lost the pseudo-inputs is refused in one line
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    del saved["model_state_dict"]["prior.pseudo_inputs"]
    torch.save(saved, tmp_path / "model" / "model.pt")
    with pytest.raises(ValueError, match=r"hold no 'prior\.pseudo_inputs'"):
        MixSCVI.load(str(tmp_path / "model"), adata=subset)
    # minified: the stored posterior is the base mixture, the latent still the flowed one
    model = loaded
    before = model.get_latent_representation()
    model.minify_adata()
    np.testing.assert_allclose(model.get_latent_representation(), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_a_model_saved_with_the_default_k_restores_after_the_default_moves(
    prior, monkeypatch, tmp_path
):
    from scmixvae.singlecell import model as model_module
    from scmixvae.singlecell import module_priors

    scvi.settings.seed = 0
    adata = synthetic_iid()
    MixSCVI.setup_anndata(adata)
    saved = MixSCVI(adata, n_components=2, prior=prior, n_latent=4)
    default = module_priors.DEFAULT_N_PRIOR_COMPONENTS
    assert saved.init_params_["non_kwargs"]["n_prior_components"] == default == 20
    saved.save(tmp_path / "model")
    for where in (model_module, module_priors):
        monkeypatch.setattr(where, "DEFAULT_N_PRIOR_COMPONENTS", 7)
    loaded = MixSCVI.load(str(tmp_path / "model"), adata=adata)
    for key, value in saved.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value, msg=key)
    # given indices set K; a fresh model takes the moved default
    indices = MixSCVI(adata, prior="vamp", pseudoinputs_data_indices=[0, 3, 9])
    assert indices.init_params_["non_kwargs"]["n_prior_components"] == 3
    assert MixSCVI(adata, prior=prior).module.prior.n_prior_components == 7


def test_query_mapping_freezes_the_prior_and_flow(tmp_path):
    scvi.settings.seed = 0
    adata = synthetic_iid(n_batches=2)
    MixSCVI.setup_anndata(adata, batch_key="batch")
    reference = MixSCVI(adata, n_components=2, prior="vamp", n_prior_components=3,
                        flow_steps=1, encode_covariates=True)  # fmt: skip
    reference.train(max_epochs=2, **TRAIN)
    batches = reference.module.pseudo_input_batch.clone()
    query = adata[:120].copy()
    query.obs["batch"] = "new_lab"
    del query.uns["_scvi_uuid"], query.uns["_scvi_manager_uuid"]
    mapped = MixSCVI.load_query_data(query, reference)
    frozen = {
        k: v.detach().clone() for k, v in mapped.module.state_dict().items()
        if k.startswith(("prior.", "flow.", "pseudo_input"))
    }  # fmt: skip
    assert "prior.pseudo_inputs" in frozen and any(k.startswith("flow.") for k in frozen)
    mapped.train(max_epochs=2, **TRAIN)
    for key, value in frozen.items():
        torch.testing.assert_close(mapped.module.state_dict()[key], value, msg=key)
    torch.testing.assert_close(mapped.module.pseudo_input_batch, batches)
    assert np.isfinite(mapped.get_latent_representation()).all()


def _fresh(pbmc):
    adata = pbmc.copy()
    MixSCVI.setup_anndata(adata, layer="counts", labels_key="cell_type")
    return adata


def test_vamp_prior_with_an_encoded_batch_embedding():
    """Pseudo-inputs hold counts only; the encoder's batch embedding comes from their batch."""
    scvi.settings.seed = 0
    adata = synthetic_iid(n_batches=2)
    MixSCVI.setup_anndata(adata, batch_key="batch")
    model = MixSCVI(adata, n_components=2, prior="vamp", n_prior_components=3,
                    encode_covariates=True, batch_representation="embedding")  # fmt: skip
    assert model.module.prior.pseudo_inputs.shape == (3, adata.n_vars)
    model.train(max_epochs=1, **TRAIN)
    assert np.isfinite(model.get_elbo())


def test_mixscanvi_takes_the_flow_and_refuses_other_priors(pbmc):
    pbmc = _fresh(pbmc)  # converted to MixSCANVI below, which registers the AnnData anew
    flowed = _trained(pbmc, epochs=2, flow_steps=1)
    scanvi = MixSCANVI.from_scvi_model(flowed, unlabeled_category="unknown")
    assert scanvi.module.flow is not None
    scanvi.train(max_epochs=1, **TRAIN)
    assert len(scanvi.predict(indices=np.arange(10))) == 10
    vamp = _trained(pbmc, epochs=1, prior="vamp")
    with pytest.raises(ValueError, match="label-conditional prior"):
        MixSCANVI.from_scvi_model(vamp, unlabeled_category="unknown")
    with pytest.raises(ValueError, match="label-conditional prior"):
        MixSCANVI(pbmc, prior="mog")


def test_bad_recipe_arguments_are_named(pbmc):
    pbmc = _fresh(pbmc)
    cases = [
        ({"prior": "laplace"}, "prior must be one of"),
        ({"prior": "vamp", "n_prior_components": 0}, "n_prior_components must be an integer"),
        ({"prior": "vamp", "n_prior_components": pbmc.n_obs + 1}, "exceeds the 500"),
        ({"prior": "vamp", "pseudoinputs_data_indices": [0, pbmc.n_obs]}, r"lie in \[0, 500\)"),
        ({"prior": "vamp", "pseudoinputs_data_indices": [0, 1], "n_prior_components": 3},
         "give one, or make them agree"),
        ({"pseudoinputs_data_indices": [0, 1]}, "for prior='vamp' only"),
        ({"flow_steps": 2, "n_latent": 1}, "at least 2 dimensions"),
        ({"flow_steps": -1}, "flow_steps must be an integer >= 0"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            MixSCVI(pbmc, n_components=2, **kwargs)
