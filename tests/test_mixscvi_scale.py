"""Large mixtures in MixSCVI: sampled components, the shared encoder, their limits and saving."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi.nn import Encoder, FCLayers
from torch.distributions import Normal

from scmixvae import MixSCVI
from scmixvae.mixture import bound
from scmixvae.singlecell.encoders import CodedFCLayer, SharedTrunkEncoder
from scmixvae.singlecell.module import MixVAE


def _counts(n_cells=128, n_genes=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["batch"] = np.where(np.arange(n_cells) % 3, "a", "b")
    return adata


def _minibatch(model, adata, n=None):
    return next(iter(model._make_data_loader(adata, batch_size=n or adata.n_obs)))


@pytest.mark.parametrize("shared_encoder", [False, True])
def test_all_sampled_components_is_the_stratified_loss(shared_encoder):
    adata = _counts()
    MixSCVI.setup_anndata(adata, batch_key="batch")
    torch.manual_seed(0)
    model = MixSCVI(adata, n_components=4, shared_encoder=shared_encoder)
    module = model.module
    tensors = _minibatch(model, adata)
    losses = {}
    for n_sampled in (None, 4):
        module.n_sampled_components = n_sampled
        torch.manual_seed(1)
        inference, generative, losses[n_sampled] = module(tensors, loss_kwargs={"kl_weight": 0.3})
        assert inference["z"].shape == (1, 4, adata.n_obs, 10)
    assert torch.equal(losses[None].loss, losses[4].loss)
    # the stratified MISELBO written out on the same draws
    qz, z = inference["qz"], inference["z"]
    x = tensors["X"]
    log_px_z = generative["px"].log_prob(x.repeat(4, 1)).sum(-1).view(1, 4, -1)
    log_w = log_px_z + 0.3 * (Normal(0.0, 1.0).log_prob(z).sum(-1) - qz.log_prob(z))
    torch.testing.assert_close(losses[4].loss, -log_w.mean((0, 1)).mean(), rtol=1e-6, atol=1e-4)


def test_sampled_components_decode_a_draws_per_cell():
    adata = _counts()
    MixSCVI.setup_anndata(adata)
    model = MixSCVI(adata, n_components=50, shared_encoder=True, n_sampled_components=3,
                    n_particles=2)  # fmt: skip
    tensors = _minibatch(model, adata)
    inference, generative, loss = model.module(tensors)
    assert inference["z"].shape == (2, 3, adata.n_obs, 10)
    assert inference["component"].shape == (3, adata.n_obs)
    # 3 distinct components per cell
    assert (inference["component"].sort(0).values.diff(dim=0) > 0).all()
    assert generative["px"].mu.shape == (2 * 3 * adata.n_obs, adata.n_vars)
    assert torch.isfinite(loss.loss)


def test_some_to_all_loss_is_unbiased_on_a_fixed_model():
    adata = _counts(n_cells=40)
    MixSCVI.setup_anndata(adata)
    torch.manual_seed(0)
    model = MixSCVI(adata, n_components=6, n_sampled_components=2)
    module = model.module.eval()  # fixed: no dropout, batch norm on its running statistics
    n_reps = 400  # independent replicates as copies of the cells: components are per cell
    one = _minibatch(model, adata)
    tensors = {k: v.repeat(n_reps, *([1] * (v.dim() - 1))) if v.dim() else v
               for k, v in one.items()}  # fmt: skip

    def replicate_bounds(n_sampled):
        """The MISELBO estimate of each replicate (mean over its cells), ``[n_reps]``."""
        with torch.no_grad():
            inference, generative = module.forward(
                tensors,
                inference_kwargs={"stratified": True, "n_sampled_components": n_sampled},
                compute_loss=False,
            )
            terms = module.draw_terms(tensors, inference, generative)
            return bound(terms, "miselbo").view(n_reps, -1).mean(1)

    torch.manual_seed(2)
    some_to_all = replicate_bounds(2)
    reference = replicate_bounds(None)  # stratified: all 6 components, same replicates
    se = math.sqrt(some_to_all.var() / n_reps + reference.var() / n_reps)
    assert abs(float(some_to_all.mean() - reference.mean())) < 3 * se
    assert se < 1.0  # a real comparison: the noise is small next to the bound (~ -100s)


def _copy_fc_layer(coded, scvi_layer):
    """Load one of scVI's ``FCLayers`` layers into a :class:`CodedFCLayer` (code zeroed)."""
    coded.linear.load_state_dict(scvi_layer[0].state_dict())
    coded.code.zero_()
    if coded.batch_norm is not None:
        coded.batch_norm.load_state_dict(scvi_layer[1].state_dict())


def _copy_mean_var(shared, reference):
    out = shared.head_out.linear
    out.weight.copy_(torch.cat([reference.mean_encoder.weight, reference.var_encoder.weight]))
    out.bias.copy_(torch.cat([reference.mean_encoder.bias, reference.var_encoder.bias]))
    shared.head_out.code.zero_()


@pytest.mark.parametrize(
    ("n_layers", "inject_covariates", "use_batch_norm"),
    [(1, True, True), (1, False, False), (2, True, True), (2, False, True), (3, True, False)],
)
def test_a_shared_encoder_of_one_component_is_an_scvi_encoder(
    n_layers, inject_covariates, use_batch_norm
):
    torch.manual_seed(3)
    options = {"n_cat_list": [3, 1], "dropout_rate": 0.2, "use_batch_norm": use_batch_norm,
               "inject_covariates": inject_covariates}  # fmt: skip
    shared = SharedTrunkEncoder(1, 30, 4, n_layers=n_layers, n_hidden=16, **options)
    reference = Encoder(30, 4, n_layers=n_layers, n_hidden=16, return_dist=True, **options)
    shared, reference = shared.double(), reference.double()
    layers = reference.encoder.fc_layers
    with torch.no_grad():  # the trunk is scVI's first layers, the coded layer its last
        if use_batch_norm:  # running statistics that are not the initial ones
            for layer in layers:
                layer[1].running_mean.normal_()
                layer[1].running_var.uniform_(0.5, 2.0)
        for i in range(n_layers - 1):
            shared.trunk.fc_layers[i].load_state_dict(layers[i].state_dict())
        _copy_fc_layer(shared.coded_layer, layers[n_layers - 1])
        _copy_mean_var(shared, reference)
    shared.eval(), reference.eval()  # dropout masks are random, so compare without them
    x = torch.rand(12, 30, dtype=torch.float64)
    cats = (torch.randint(3, (12, 1)), torch.zeros(12, 1, dtype=torch.long))
    qz = shared(x, *cats)
    dist, _ = reference(x, *cats)
    assert qz.component_loc.shape == (1, 12, 4)
    torch.testing.assert_close(qz.component_loc[0], dist.loc)
    torch.testing.assert_close(qz.component_scale[0], dist.scale)


@pytest.mark.parametrize("inject_covariates", [True, False])
def test_the_earlier_shared_layout_is_an_scvi_encoder_one_layer_deeper(inject_covariates):
    torch.manual_seed(3)
    options = {"n_cat_list": [3], "dropout_rate": 0.0, "use_batch_norm": False,
               "inject_covariates": inject_covariates}  # fmt: skip
    shared = SharedTrunkEncoder(1, 30, 4, n_layers=1, n_hidden=16, n_head_hidden=16, **options)
    reference = Encoder(30, 4, n_layers=2, n_hidden=16, return_dist=True, **options)
    shared, reference = shared.double(), reference.double()
    with torch.no_grad():  # trunk = scVI's first layer; head = its second; codes add nothing
        shared.trunk.fc_layers[0].load_state_dict(reference.encoder.fc_layers[0].state_dict())
        shared.head.linear.load_state_dict(reference.encoder.fc_layers[1][0].state_dict())
        shared.head.code.zero_()
        _copy_mean_var(shared, reference)
    x = torch.rand(12, 30, dtype=torch.float64)
    cat = torch.randint(3, (12, 1))
    qz = shared(x, cat)
    dist, _ = reference(x, cat)
    torch.testing.assert_close(qz.component_loc[0], dist.loc)
    torch.testing.assert_close(qz.component_scale[0], dist.scale)


def test_coded_layer_shifts_the_normalised_layer_per_component_with_own_masks():
    torch.manual_seed(0)
    layer = CodedFCLayer(4, 6, 5, dropout_rate=0.5, use_batch_norm=True, use_layer_norm=False,
                         use_activation=False, bias=True, activation_fn=torch.nn.ReLU)  # fmt: skip
    # the codes start on the scale of the normalised pre-activation, not of a bias
    assert layer.code.abs().max() > 0.5
    h = torch.randn(64, 6)
    out = layer(h)
    assert out.shape == (64, 4, 5)
    kept = out != 0
    assert (kept[:, 0] != kept[:, 1]).any()  # each component its own dropout mask
    layer.dropout = None
    out = layer(h)
    # batch norm statistics come from the cells alone: each component is the normalised
    # layer plus its code
    normalised = out - layer.code
    torch.testing.assert_close(normalised[:, 0].mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised[:, 0], normalised[:, 3])
    without_norm = CodedFCLayer(4, 400, 5, dropout_rate=0.0, use_batch_norm=False,
                                use_layer_norm=False, use_activation=True, bias=True,
                                activation_fn=torch.nn.ReLU)  # fmt: skip
    assert without_norm.code.abs().max() <= 1 / 20


def test_the_shared_trunk_is_scvis_encoder_layers_with_all_their_options():
    shared = SharedTrunkEncoder(
        8, 30, 4, n_cat_list=[3], n_layers=3, dropout_rate=0.2, use_batch_norm=False,
        use_layer_norm=True, activation_fn=torch.nn.ELU,
    )  # fmt: skip
    reference = FCLayers(30, 128, n_cat_list=[3], n_layers=2, dropout_rate=0.2,
                         use_batch_norm=False, use_layer_norm=True,
                         activation_fn=torch.nn.ELU)  # fmt: skip
    assert isinstance(shared.trunk, FCLayers)
    assert repr(shared.trunk) == repr(reference)
    coded = shared.coded_layer
    assert isinstance(coded.activation, torch.nn.ELU)
    assert coded.batch_norm is None and coded.layer_norm is not None
    assert coded.dropout.p == 0.2
    # batch covariates reach the coded layer too when injected into every layer
    assert coded.linear.in_features == 128 + 3
    # scVI's default single layer: no trunk, the code sits beside the genes
    first = SharedTrunkEncoder(8, 30, 4, n_cat_list=[3], n_layers=1, inject_covariates=False)
    assert first.trunk is None and first.coded_layer.linear.in_features == 30 + 3


def _n_parameters(module):
    return sum(p.numel() for p in module.parameters())


def test_a_shared_component_costs_under_one_percent_of_the_trunk():
    # MixSCVI's default sizes on 2,000 genes
    sizes = {}
    for n_components in (1, 2, 50, 51):
        module = MixVAE(2000, n_components=n_components, shared_encoder=True)
        sizes[n_components] = _n_parameters(module)
    trunk = module.z_encoder.trunk_parameters()
    for small, large in ((1, 2), (50, 51)):
        assert 0 < sizes[large] - sizes[small] <= 0.01 * trunk
    # separate encoders cost a whole encoder per component: all the shared encoder but its codes
    separate = _n_parameters(MixVAE(2000, n_components=2)) - _n_parameters(
        MixVAE(2000, n_components=1)
    )
    assert separate == trunk


def test_large_shared_mixtures_train_and_limits_are_named():
    adata = _counts(n_cells=256, n_genes=100)
    MixSCVI.setup_anndata(adata)
    scvi.settings.seed = 0
    model = MixSCVI(adata, n_components=500, shared_encoder=True, n_sampled_components=5)
    model.train(max_epochs=1, enable_progress_bar=False)  # default batch size
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert model.get_latent_representation(component="all").shape == (256, 500, 10)
    assert np.isfinite(model.get_marginal_ll(n_mc_samples=500))
    with pytest.raises(ValueError, match="shared_encoder=True"):
        MixSCVI(adata, n_components=200)
    with pytest.raises(ValueError, match="beyond the supported 1024"):
        MixSCVI(adata, n_components=2000, shared_encoder=True, n_sampled_components=1)
    with pytest.raises(ValueError, match="n_sampled_components"):
        MixSCVI(adata, n_components=500, shared_encoder=True)  # 500 decoder passes per cell
    with pytest.raises(ValueError, match="n_sampled_components"):
        MixSCVI(adata, n_components=5, n_sampled_components=6)
    with pytest.raises(ValueError, match="'miselbo', 'ensemble', 'some_to_some'"):
        MixSCVI(adata, objective="iwae")


def test_options_survive_save_and_load(tmp_path):
    adata = _counts()
    MixSCVI.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = MixSCVI(adata, n_components=20, shared_encoder=True, n_sampled_components=3,
                    objective="some_to_some")  # fmt: skip
    model.train(max_epochs=2, enable_progress_bar=False)
    text = repr(model)
    assert "20 mixture components (shared encoder)" in text and "3 component(s)" in text
    model.save(tmp_path / "m")
    loaded = MixSCVI.load(tmp_path / "m", adata=adata)
    for name in ("n_components", "shared_encoder", "n_sampled_components", "objective"):
        assert getattr(loaded.module, name) == getattr(model.module, name)
    assert isinstance(loaded.module.z_encoder, SharedTrunkEncoder)
    assert repr(loaded).splitlines()[0] == text.splitlines()[0]
    np.testing.assert_array_equal(
        loaded.get_latent_representation(component="all"),
        model.get_latent_representation(component="all"),
    )


def test_the_earlier_shared_layout_round_trips_and_old_saves_are_named(tmp_path):
    adata = _counts()
    MixSCVI.setup_anndata(adata)
    scvi.settings.seed = 0
    model = MixSCVI(adata, n_components=4, shared_encoder=True, n_head_hidden=8)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.module.z_encoder.head.n_out == 8
    model.save(tmp_path / "m")
    loaded = MixSCVI.load(tmp_path / "m", adata=adata)
    latent = model.get_latent_representation(component="all")
    np.testing.assert_array_equal(loaded.get_latent_representation(component="all"), latent)
    # a save of scmixvae 0.1.0: the same weights, without n_head_hidden among its settings
    path = tmp_path / "m" / "model.pt"
    saved = torch.load(path, weights_only=False)
    del saved["attr_dict"]["init_params_"]["kwargs"]["kwargs"]["n_head_hidden"]
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"scmixvae 0\.1\.0.*n_head_hidden=64"):
        MixSCVI.load(tmp_path / "m", adata=adata)
    # the way out the message gives
    rebuilt = MixSCVI(adata, n_components=4, shared_encoder=True, n_head_hidden=8)
    state = saved["model_state_dict"]
    state.pop("pyro_param_store", None)
    rebuilt.module.load_state_dict(state)
    rebuilt.is_trained_ = True
    np.testing.assert_array_equal(rebuilt.get_latent_representation(component="all"), latent)


def test_importance_weighted_loss_with_a_latent_library():
    adata = _counts()
    MixSCVI.setup_anndata(adata, batch_key="batch")
    torch.manual_seed(0)
    model = MixSCVI(adata, n_components=3, n_particles=4, importance_weighted=True,
                    use_observed_lib_size=False)  # fmt: skip
    module = model.module.eval()
    tensors = _minibatch(model, adata)
    torch.manual_seed(2)
    inference, generative, loss = module(tensors, loss_kwargs={"kl_weight": 0.5})
    qz, z, x = inference["qz"], inference["untran_z"], tensors["X"]
    assert z.shape == (4, 3, adata.n_obs, 10)
    log_px_z = generative["px"].log_prob(x.repeat(12, 1)).sum(-1).view(4, 3, -1)
    library = inference["library"]  # [L, S, B, 1]: one library draw per latent draw
    prior = module._library_prior(tensors["batch"])
    log_lib = (prior.log_prob(library) - inference["ql"].log_prob(library)).sum(-1)
    log_w = log_px_z + log_lib + 0.5 * (Normal(0.0, 1.0).log_prob(z).sum(-1) - qz.log_prob(z))
    expected = -(torch.logsumexp(log_w, 0) - math.log(4)).mean(0).mean()
    torch.testing.assert_close(loss.loss, expected, rtol=1e-5, atol=1e-3)
    # the importance-weighted bound is above the averaged one on the same draws
    assert loss.loss < -log_w.mean((0, 1)).mean()
