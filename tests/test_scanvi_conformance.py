"""SCANVI and MixSCANVI driven through the same calls: same return types, shapes and columns.

The scvi-tools annotation workflow (SCVI → SCANVI.from_scvi_model → train → predict → scArches
query) runs once with scvi-tools' classes and once with scmixvae's, on
``scvi.data.synthetic_iid()`` with a third of the labels hidden. Each scenario must give results
of the same structure; where the mixture adds something (uncertainty columns) it is asked for
explicitly, so the default calls stay drop-in.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scvi
import torch
from scvi.data import synthetic_iid
from test_scvi_conformance import _structure

from scmixvae import MixSCANVI, MixSCVI

UNLABELED = "Unknown"
PAIRS = {"scvi-tools": (scvi.model.SCVI, scvi.model.SCANVI), "scmixvae": (MixSCVI, MixSCANVI)}


def _annotated(seed: int = 0):
    adata = synthetic_iid()
    rng = np.random.default_rng(seed)
    labels = adata.obs["labels"].astype(str).to_numpy().copy()
    labels[rng.random(adata.n_obs) < 1 / 3] = UNLABELED
    adata.obs["cell_type"] = labels
    return adata


def _workflow(scvi_cls, scanvi_cls):
    scvi.settings.seed = 0
    adata = _annotated()
    scvi_cls.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    options = {"n_components": 3} if scvi_cls is MixSCVI else {}
    reference = scvi_cls(adata, n_latent=6, **options)
    reference.train(max_epochs=2, batch_size=128, enable_progress_bar=False)
    model = scanvi_cls.from_scvi_model(reference, UNLABELED)
    model.train(max_epochs=2, batch_size=128, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: _workflow(*pair) for name, pair in PAIRS.items()}


SCENARIOS = {
    "predict": lambda m: m.predict(),
    "predict_soft": lambda m: m.predict(soft=True),
    "predict_indices": lambda m: m.predict(indices=np.arange(23), soft=True),
    "predict_sampled": lambda m: m.predict(soft=True, use_posterior_mean=False),
    "latent": lambda m: m.get_latent_representation(),
    "latent_dist": lambda m: m.get_latent_representation(return_dist=True),
    "elbo": lambda m: m.get_elbo(),
    "marginal_ll_per_cell": lambda m: m.get_marginal_ll(n_mc_samples=4, return_mean=False),
    "reconstruction_error": lambda m: m.get_reconstruction_error(),
    "normalized": lambda m: m.get_normalized_expression(n_samples=2),
    "de": lambda m: m.differential_expression(groupby="cell_type", group1="label_0"),
    "summary": lambda m: m.summary_string,
    "labels_mapping": lambda m: tuple(m._label_mapping),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_types_and_shapes_as_scanvi(models, name):
    torch.manual_seed(0)
    results = {key: SCENARIOS[name](model) for key, model in models.items()}
    reference, mixture = results["scvi-tools"], results["scmixvae"]
    assert _structure(mixture) == _structure(reference)
    if name == "predict_soft":  # a probability table over the same labels, rows summing to one
        assert list(mixture.columns) == list(reference.columns)
        np.testing.assert_allclose(mixture.to_numpy().sum(1), 1.0, rtol=1e-5)
    if name == "predict":
        assert set(mixture) <= set(models["scmixvae"]._label_mapping) - {UNLABELED}


def test_uncertainty_is_an_opt_in_addition(models):
    model = models["scmixvae"]
    probabilities = model.predict(soft=True)
    both = model.predict(soft=True, return_uncertainty=True)
    assert isinstance(both, tuple) and len(both) == 2
    assert _structure(both[0]) == _structure(probabilities)
    uncertainty = both[1]
    assert list(uncertainty.index) == list(probabilities.index)
    assert {"confidence", "entropy", "disagreement", "expected_entropy"} <= set(uncertainty)
    np.testing.assert_allclose(
        uncertainty["entropy"], uncertainty["disagreement"] + uncertainty["expected_entropy"],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_save_load_and_query_mapping_alike(models, tmp_path):
    structures = {}
    for key, model in models.items():
        path = tmp_path / key
        model.save(str(path), save_anndata=False)
        loaded = type(model).load(str(path), adata=model.adata)
        np.testing.assert_allclose(loaded.predict(soft=True), model.predict(soft=True),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        query = _annotated(seed=1)
        query.obs["batch"] = "query_batch"
        query.obs["cell_type"] = UNLABELED
        type(model).prepare_query_anndata(query, str(path))
        mapped = type(model).load_query_data(query, str(path))
        mapped.train(max_epochs=1, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
        structures[key] = (mapped.predict(), mapped.predict(soft=True),
                           mapped.get_latent_representation())  # fmt: skip
        assert mapped.adata.n_obs == query.n_obs
    assert _structure(structures["scmixvae"]) == _structure(structures["scvi-tools"])


def test_ranked_features_alike(models):
    pytest.importorskip("captum")
    results = {}
    for key, model in models.items():
        torch.manual_seed(0)
        _, attributions = model.predict(indices=np.arange(20), ig_interpretability=True)
        results[key] = attributions
    assert _structure(results["scmixvae"]) == _structure(results["scvi-tools"])


def test_an_untrained_query_model_saved_and_loaded_predicts_alike(models, tmp_path):
    """scvi-tools' test_scanvi_online_update ends so: a query model straight from
    load_query_data (never trained), saved, loaded, then predict() and get_elbo()."""
    outputs = {}
    for key, model in models.items():
        reference, query_dir = tmp_path / f"{key}_ref", tmp_path / f"{key}_query"
        model.save(str(reference), save_anndata=False)
        query = _annotated(seed=2)
        query.obs["batch"] = "query_batch"
        mapped = type(model).load_query_data(query, str(reference))
        assert not mapped.is_trained
        mapped.save(str(query_dir))
        loaded = type(model).load(str(query_dir), adata=query)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs[key] = (loaded.predict(soft=True), loaded.get_elbo())
        if key == "scmixvae":  # SCANVI predicts silently; the mixture says it is untrained
            assert any(
                "not trained" in str(w.message).lower() or "untrained" in str(w.message).lower()
                for w in caught
            ), [str(w.message) for w in caught]
    assert _structure(outputs["scmixvae"]) == _structure(outputs["scvi-tools"])
    probabilities = outputs["scmixvae"][0].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
