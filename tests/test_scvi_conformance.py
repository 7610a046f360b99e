"""SCVI and MixSCVI driven through the same scenarios: same return types and shapes.

Each scenario is a function of a model class; it runs for ``scvi.model.SCVI`` and for
``MixSCVI`` on ``scvi.data.synthetic_iid()``, and the two results must have the same structure
(types, shapes, DataFrame columns). Where a mixture legitimately differs, the scenario says so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scvi.data import synthetic_iid

from scmixvae import MixSCVI

MIXTURE = {"n_components": 3}


def _structure(value):
    """A comparable description of a result: types and shapes, recursively."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape))
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape)
    if isinstance(value, pd.DataFrame):
        return ("DataFrame", value.shape, tuple(value.columns))
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(_structure(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _structure(v)) for k, v in sorted(value.items())))
    if isinstance(value, torch.distributions.Distribution):
        return (type(value).__name__, tuple(value.batch_shape), tuple(value.event_shape))
    return (type(value).__name__,)


def _options(cls, **kwargs):
    return {**(MIXTURE if cls is MixSCVI else {}), **kwargs}


def _trained(cls, adata=None, epochs=2, setup=None, **kwargs):
    scvi.settings.seed = 0
    adata = synthetic_iid() if adata is None else adata
    cls.setup_anndata(adata, **(setup or {"batch_key": "batch", "labels_key": "labels"}))
    model = cls(adata, **_options(cls, **kwargs))
    model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {cls: _trained(cls) for cls in (scvi.model.SCVI, MixSCVI)}


def _same(models, scenario):
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  scvi-tools samples anchors with the global generator
    results = {cls: scenario(model) for cls, model in models.items()}
    reference, mixture = results.values()
    assert _structure(mixture) == _structure(reference)
    return reference, mixture


SCENARIOS = {
    "latent": lambda m: m.get_latent_representation(),
    "latent_dist": lambda m: m.get_latent_representation(return_dist=True),
    "latent_sample": lambda m: m.get_latent_representation(give_mean=False),
    "latent_indices": lambda m: m.get_latent_representation(indices=np.arange(17)),
    "elbo": lambda m: m.get_elbo(),
    "elbo_per_cell": lambda m: m.get_elbo(return_mean=False),
    "marginal_ll": lambda m: m.get_marginal_ll(n_mc_samples=6),
    "marginal_ll_per_cell": lambda m: m.get_marginal_ll(n_mc_samples=6, return_mean=False),
    "reconstruction_error": lambda m: m.get_reconstruction_error(),
    "normalized": lambda m: m.get_normalized_expression(),
    "normalized_samples": lambda m: m.get_normalized_expression(n_samples=3, return_mean=False),
    "normalized_batch": lambda m: m.get_normalized_expression(transform_batch="batch_1"),
    "normalized_latent_library": lambda m: m.get_normalized_expression(library_size="latent"),
    "normalized_importance": lambda m: m.get_normalized_expression(
        indices=np.arange(40),
        n_samples_overall=60,
        return_numpy=True,
        weights="importance",
        max_cells=20,
        n_mc_samples=8,
        n_mc_samples_per_pass=8,
    ),
    "library_size": lambda m: m.get_latent_library_size(give_mean=False),
    "likelihood_parameters": lambda m: m.get_likelihood_parameters(n_samples=2),
    "posterior_predictive": lambda m: m.posterior_predictive_sample(n_samples=2).todense(),
    "feature_correlation": lambda m: m.get_feature_correlation_matrix(n_samples=2),
    "de": lambda m: m.differential_expression(groupby="labels", group1="label_0"),
    "de_change": lambda m: m.differential_expression(
        groupby="labels", group1="label_0", mode="change"
    ),
    "de_importance": lambda m: m.differential_expression(
        groupby="labels",
        group1="label_0",
        weights="importance",
        importance_weighting_kwargs={
            "max_cells": 30,
            "n_mc_samples": 8,
            "n_mc_samples_per_pass": 8,
        },
    ),
    "aggregated_posterior": lambda m: m.get_aggregated_posterior(indices=np.arange(10)),
    "differential_abundance": lambda m: m.differential_abundance(
        batch_size=100, sample_key="batch"
    ),
    "var_names": lambda m: m.get_var_names(),
    "summary": lambda m: m.summary_string,
    "view_setup": lambda m: m.view_anndata_setup(),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_types_and_shapes_as_scvi(models, name):
    _, mixture = _same(models, SCENARIOS[name])
    if name == "marginal_ll":
        assert isinstance(mixture, np.float64) and np.isfinite(mixture)
    if name in ("de", "de_change", "de_importance"):
        assert np.isfinite(mixture["bayes_factor"]).all()


def test_importance_weights_match_a_brute_force_computation(models):
    model = models[MixSCVI]
    module = model.module.eval()
    adata = model.adata
    indices = np.arange(12)
    torch.manual_seed(1)
    outputs = [
        module.forward(t, inference_kwargs={"n_samples": 1}, compute_loss=False)
        for t in model._make_data_loader(adata, indices=indices, batch_size=12)
    ]
    ((inference, generative),) = outputs
    zs, px = inference["z"], generative["px"]
    torch.manual_seed(2)
    weights = model.get_importance_weights(adata, indices, qz=None, px=px, zs=zs,
                                           n_mc_samples=20)  # fmt: skip
    torch.manual_seed(2)  # the same importance samples for the anchors' log p(x)
    log_px = model.get_marginal_ll(adata, indices=indices, n_mc_samples=20, return_mean=False)
    tensors = next(iter(model._make_data_loader(adata, indices=indices, batch_size=12)))
    x, batch = tensors["X"], tensors["batch"]
    qz = model._posterior(module.inference(**module._get_inference_input(tensors)))
    log_w = torch.empty(12)
    with torch.no_grad():
        for i in range(12):  # draw i, taken in cell i
            terms = []
            for a in range(12):  # anchor a: decode z_i at a's library, in cell i's batch
                out = module.generative(zs[i : i + 1], x[a : a + 1].sum(1, keepdim=True).log(),
                                        batch[i : i + 1])  # fmt: skip
                log_px_z = out["px"].log_prob(x[a : a + 1]).sum()
                log_q_a = torch.logsumexp(
                    torch.distributions.Normal(qz.component_loc[:, a], qz.component_scale[:, a])
                    .log_prob(zs[i]).sum(-1), 0,
                ) - np.log(qz.n_components)  # fmt: skip
                terms.append((log_px_z - log_px[a], log_q_a))
            log_pz = torch.distributions.Normal(0, 1).log_prob(zs[i]).sum()
            log_w[i] = (
                log_pz + torch.logsumexp(torch.stack([t[0] for t in terms]), 0)
                - torch.logsumexp(torch.stack([t[1] for t in terms]), 0)
            )  # fmt: skip
    expected = torch.softmax(log_w, 0).numpy()
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-7)
    assert weights.std() > 0.1 / 12  # a real comparison: the weights are far from uniform


def test_no_anndata_training_from_a_datamodule():
    from scvi.dataloaders import DataSplitter

    class CountsDataModule(DataSplitter):  # what scvi-tools reads from a datamodule
        def __init__(self, manager, **kwargs):
            super().__init__(manager, **kwargs)
            stats = manager.summary_stats
            self.n_vars, self.n_batch, self.n_labels = stats.n_vars, stats.n_batch, stats.n_labels
            self.registry = manager.registry

    adata = synthetic_iid()
    results = {}
    for cls in (scvi.model.SCVI, MixSCVI):
        cls.setup_anndata(adata, batch_key="batch")
        manager = cls._get_most_recent_anndata_manager(adata)
        datamodule = CountsDataModule(manager, train_size=0.9, batch_size=128)
        with pytest.warns(UserWarning, match="initialized when calling `train`"):
            model = cls(**({"n_components": 3} if cls is MixSCVI else {}))
        assert model.module is None  # built by train() from the datamodule
        model.train(max_epochs=1, datamodule=datamodule, enable_progress_bar=False)
        results[cls] = model.get_latent_representation(dataloader=datamodule.train_dataloader())
    assert _structure(results[MixSCVI]) == _structure(results[scvi.model.SCVI])
    with pytest.raises(ValueError, match="library-size prior"):
        MixSCVI(use_observed_lib_size=False)


def test_minified_models_keep_every_component():
    results = {}
    for cls in (scvi.model.SCVI, MixSCVI):
        # S = 5 and 30 dimensions: layouts where a sum in another memory order differs by 1 ulp
        model = _trained(
            cls, epochs=1, n_latent=30, **({"n_components": 5} if cls is MixSCVI else {})
        )
        before = model.get_latent_representation()
        if cls is scvi.model.SCVI:
            qzm, qzv = model.get_latent_representation(return_dist=True)
            model.adata.obsm["X_latent_qzm"], model.adata.obsm["X_latent_qzv"] = qzm, qzv
        model.minify_adata()
        assert model.minified_data_type == "latent_posterior_parameters"
        after = model.get_latent_representation()
        np.testing.assert_array_equal(after, before)  # bit-identical, as SCVI's
        results[cls] = model.get_normalized_expression(n_samples=2)
        if cls is MixSCVI:  # all components are stored, component-major
            assert model.adata.obsm["X_latent_qzm"].shape == (model.adata.n_obs, 5 * 30)
            np.testing.assert_allclose(
                model.get_latent_representation(component="all"),
                model.adata.obsm["X_latent_qzm"].reshape(-1, 5, 30),
            )
            with pytest.raises(ValueError, match="minified"):
                model.train(max_epochs=1)
    assert _structure(results[MixSCVI]) == _structure(results[scvi.model.SCVI])


def test_batch_embedding_and_logistic_normal_latent():
    for kwargs in ({"batch_representation": "embedding", "encode_covariates": True},
                   {"latent_distribution": "ln"}):  # fmt: skip
        results = {}
        for cls in (scvi.model.SCVI, MixSCVI):
            model = _trained(cls, epochs=1, **kwargs)
            # scvi-tools decodes several draws per cell with batch embeddings in neither model
            results[cls] = (model.get_latent_representation(),
                            model.get_normalized_expression(),
                            model.get_elbo())  # fmt: skip
            if kwargs.get("batch_representation"):
                results[cls] += (model.get_batch_representation(),)
        assert _structure(results[MixSCVI]) == _structure(results[scvi.model.SCVI])
        if "latent_distribution" in kwargs:  # the ln latent lives on the simplex
            np.testing.assert_allclose(results[MixSCVI][0].sum(1), 1.0, rtol=1e-5)


def test_autotune_payload_reaches_scib_callbacks():
    import lightning.pytorch as pl

    class ScibPayloadProbe(pl.Callback):  # scvi-tools feeds callbacks named *Scib* the payload
        def on_train_epoch_end(self, trainer, pl_module):
            self.outputs = pl_module._training_epoch_outputs

    for cls in (scvi.model.SCVI, MixSCVI):
        cls.setup_anndata(adata := synthetic_iid(), batch_key="batch", labels_key="labels")
        model = cls(adata, extra_payload_autotune=True, **_options(cls))
        probe = ScibPayloadProbe()
        model.train(max_epochs=1, callbacks=[probe], enable_progress_bar=False)
        assert probe.outputs["z"].shape[1] == 10
        assert len(probe.outputs["batch"]) == len(probe.outputs["z"])


def test_scib_callback_trains_under_default_settings():
    from scvi.train import ScibCallback

    for cls in (scvi.model.SCVI, MixSCVI):
        cls.setup_anndata(adata := synthetic_iid(), batch_key="batch", labels_key="labels")
        model = cls(adata, **_options(cls))  # extra_payload_autotune left at its default
        callback = ScibCallback()
        model.train(max_epochs=1, callbacks=[callback], enable_progress_bar=False)
        assert callback.pl_module is not None  # the callback saw the whole training
    assert np.isfinite(model.history["jsd_train"].to_numpy(dtype=float)).all()
    outputs = callback.pl_module._training_epoch_outputs  # the payload scib-metrics reads
    assert outputs["z"].shape == (len(outputs["batch"]), 10)


def test_anncollection_input():
    import scipy.sparse as sp
    from anndata.experimental import AnnCollection
    from scvi.dataloaders import CollectionAdapter

    data = synthetic_iid()
    data.layers["counts"] = sp.csr_matrix(data.X)  # scvi-tools' adapter reads sparse layers
    parts = [data[:200].copy(), data[200:].copy()]
    for cls in (scvi.model.SCVI, MixSCVI):
        collection = CollectionAdapter(AnnCollection(parts, join_vars="inner", label="part"))
        cls.setup_anndata(collection, layer="counts", batch_key="batch")
        model = cls(collection, **_options(cls))
        model.train(max_epochs=1, enable_progress_bar=False)
        assert model.get_latent_representation().shape == (400, 10)


def test_legacy_saves_and_scanvi_handoff_are_refused_clearly(models, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model_params.pt").write_bytes(b"")  # a pre-1.0 scvi-tools save
    for cls in (scvi.model.SCVI, MixSCVI):
        with pytest.raises(ValueError, match="convert_legacy_save"):
            cls.load(str(legacy), adata=synthetic_iid())
    scanvi = scvi.model.SCANVI.from_scvi_model(models[scvi.model.SCVI], "Unknown")
    assert scanvi.was_pretrained
    with pytest.raises(TypeError, match="SCANVI's encoder is one Gaussian"):
        scvi.model.SCANVI.from_scvi_model(models[MixSCVI], "Unknown")


def test_counts_only_options_are_refused_with_a_reason():
    adata = synthetic_iid()
    MixSCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="for counts"):
        MixSCVI(adata, gene_likelihood="normal")
    with pytest.raises(ValueError, match=r"extra_encoder_kwargs \['n_cont'\]"):
        MixSCVI(adata, extra_encoder_kwargs={"n_cont": 2})
    model = MixSCVI(adata, extra_encoder_kwargs={"var_eps": 0.5, "activation_fn": torch.nn.ELU})
    assert model.module.z_encoder.var_eps == 0.5  # honoured, not silently dropped
    assert any(isinstance(m, torch.nn.ELU) for m in model.module.z_encoder.modules())


@pytest.mark.parametrize(
    "options",
    [
        {"dispersion": "gene-batch"},
        {"dispersion": "gene-label"},
        {"dispersion": "gene-cell", "gene_likelihood": "nb"},
        {"use_observed_lib_size": False, "gene_likelihood": "poisson"},
        {"use_batch_norm": "none", "use_layer_norm": "both", "deeply_inject_covariates": False},
        {"encode_covariates": True, "n_layers": 2, "extra_decoder_kwargs": {"bias": False}},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_scvi_options_work_alike(options):
    results = {}
    for cls in (scvi.model.SCVI, MixSCVI):
        model = _trained(cls, epochs=1, **options)
        results[cls] = (model.get_latent_representation(), model.get_elbo(),
                        model.get_normalized_expression(n_samples=2))  # fmt: skip
    assert _structure(results[MixSCVI]) == _structure(results[scvi.model.SCVI])
    assert np.isfinite(float(results[MixSCVI][1]))


def test_latent_of_a_module_wrapped_in_a_mock(models):
    """scvi-tools' test_scvi_get_latent_rep_backwards_compat: the module wrapped in
    ``mock.Mock(wraps=...)`` whose inference returns the legacy ``qzm``/``qzv``; the model's
    settings must not be read off the module (a Mock's attributes are Mocks)."""
    from unittest import mock

    from scvi.module._constants import MODULE_KEYS

    for model in models.values():
        module = model.module
        expected = model.get_latent_representation()
        wrapped = mock.Mock(wraps=module)

        def legacy_inference(*args, module=module, **kwargs):
            outputs = dict(module.inference(*args, **kwargs))
            qz = outputs.pop(MODULE_KEYS.QZ_KEY)
            outputs[MODULE_KEYS.QZM_KEY], outputs[MODULE_KEYS.QZV_KEY] = qz.loc, qz.scale**2
            return outputs

        wrapped.inference.side_effect = legacy_inference
        model.module = wrapped
        try:
            latent = model.get_latent_representation()
        finally:
            model.module = module
        np.testing.assert_allclose(latent, expected, rtol=1e-5, atol=1e-6)
