"""scArches reference mapping with MixSCVI: what a query updates, and that latents round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from scvi.data import synthetic_iid

from scmixvae import MixSCVI

TRAIN = {"batch_size": 128, "enable_progress_bar": False}


def _reference(shared_encoder: bool, encode_covariates: bool, **kwargs):
    scvi.settings.seed = 0
    adata = synthetic_iid(n_batches=2)
    MixSCVI.setup_anndata(adata, batch_key="batch")
    model = MixSCVI(adata, n_components=3, shared_encoder=shared_encoder,
                    encode_covariates=encode_covariates, **kwargs)  # fmt: skip
    model.train(max_epochs=3, **TRAIN)
    return model


def _query(reference, batch: str):
    query = reference.adata[:150].copy()  # cells the reference has seen
    query.obs["batch"] = batch
    del query.uns["_scvi_uuid"], query.uns["_scvi_manager_uuid"]
    return query


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("shared_encoder", [False, True])
def test_query_latents_of_reference_cells_round_trip(shared_encoder, tmp_path):
    reference = _reference(shared_encoder, encode_covariates=False)
    expected = reference.get_latent_representation(indices=np.arange(150))
    reference.save(tmp_path / "reference")
    query = _query(reference, batch="new_lab")
    MixSCVI.prepare_query_anndata(query, str(tmp_path / "reference"))
    mapped = MixSCVI.load_query_data(query, str(tmp_path / "reference"))
    assert mapped.summary_stats.n_batch == 3  # the new batch has its own category
    before = _weights(mapped.module)
    mapped.train(max_epochs=5, plan_kwargs={"weight_decay": 0.0}, **TRAIN)
    after = _weights(mapped.module)
    # the encoder does not see the batch (encode_covariates=False): the same latents
    np.testing.assert_allclose(mapped.get_latent_representation(), expected, atol=1e-5)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("z_encoder") for k in changed), changed
    # what changed: the decoder's weights of the new batch, and the library encoder
    first_decoder = "decoder.px_decoder.fc_layers.Layer 0.0.weight"
    assert first_decoder in changed
    delta = (after[first_decoder] - before[first_decoder]).abs()
    assert delta[:, -1].max() > 0 and delta[:, :-1].max() == 0  # only the new batch's column


@pytest.mark.parametrize("layout", ["stacked", "shared", "shared, 0.1.0 head"])
def test_encoder_covariates_update_only_the_new_batch(layout, tmp_path):
    head = {"n_head_hidden": 16} if "head" in layout else {}
    reference = _reference(layout != "stacked", encode_covariates=True, **head)
    reference.save(tmp_path / "reference")
    mapped = MixSCVI.load_query_data(_query(reference, "new_lab"), str(tmp_path / "reference"))
    before = _weights(mapped.module)
    mapped.train(max_epochs=5, plan_kwargs={"weight_decay": 0.0}, **TRAIN)
    after = _weights(mapped.module)
    encoder = mapped.module.z_encoder
    n_cat = 3  # batch_0, batch_1, new_lab: the new category is the last column
    coded = None
    if layout == "stacked":
        first = "z_encoder.encoder.layers.0.linear.weight"
    elif layout == "shared":  # scVI's single layer is the coded one
        first = "z_encoder.coded_layer.linear.weight"
        assert encoder.trunk is None and encoder.coded_layer.linear.in_features == 100 + n_cat
    else:
        first = "z_encoder.trunk.fc_layers.Layer 0.0.weight"
        coded = "z_encoder.head.linear.weight"
        assert encoder.head.linear.in_features == 128 + n_cat
    # scArches trains the categorical columns; only the new category's is used by the query
    delta = (after[first] - before[first]).abs()
    assert delta[..., -1].max() > 0 and delta[..., :-1].max() == 0
    if coded:
        delta = (after[coded] - before[coded]).abs()
        assert delta[..., -1].max() > 0 and delta[..., :-1].max() == 0
    frozen = [k for k in after if k.startswith("z_encoder") and k not in (first, coded)]
    for key in frozen:  # everything else in the encoder, batch-norm statistics included
        assert torch.equal(before[key], after[key]), key


def test_unfrozen_query_trains_everything(tmp_path):
    reference = _reference(False, encode_covariates=True)
    mapped = MixSCVI.load_query_data(_query(reference, "new_lab"), reference, unfrozen=True)
    assert all(p.requires_grad for p in mapped.module.parameters())


def test_freezing_rules_for_the_stacked_encoder():
    from scmixvae.mixture import StackedEncoder
    from scmixvae.singlecell.arches import freeze_mixture_encoder_for_query

    encoder = StackedEncoder(3, 20, 4, n_cat_list=[3], n_layers=2, inject_covariates=True)
    freeze_mixture_encoder_for_query(encoder)
    layers = encoder.encoder.layers
    assert all(layer.linear.weight.requires_grad for layer in layers)  # covariate columns
    assert not any(layer.linear.bias.requires_grad for layer in layers)
    assert not encoder.mean_encoder.weight.requires_grad
    assert all(layer.batch_norm.momentum == 0 for layer in layers)  # statistics stay fixed
    x, cat = torch.rand(6, 20), torch.randint(3, (6, 1))
    encoder(x, cat).component_loc.sum().backward()
    grad = layers[0].linear.weight.grad
    assert grad[..., :20].abs().max() == 0 and grad[..., 20:].abs().max() > 0
    thawed = StackedEncoder(3, 20, 4)
    freeze_mixture_encoder_for_query(thawed, freeze_expression=False)
    assert thawed.encoder.layers[0].linear.bias.requires_grad


def test_freezing_rules_for_the_shared_encoder():
    from scmixvae.singlecell.arches import freeze_mixture_encoder_for_query
    from scmixvae.singlecell.encoders import SharedTrunkEncoder

    encoder = SharedTrunkEncoder(3, 20, 4, n_cat_list=[3])
    freeze_mixture_encoder_for_query(encoder)
    coded = encoder.coded_layer
    assert coded.linear.weight.requires_grad and not coded.linear.bias.requires_grad
    assert not coded.code.requires_grad and not coded.batch_norm.weight.requires_grad
    encoder(torch.rand(6, 20), torch.randint(3, (6, 1))).component_loc.sum().backward()
    grad = coded.linear.weight.grad
    assert grad[..., :20].abs().max() == 0 and grad[..., 20:].abs().max() > 0
    thawed = SharedTrunkEncoder(3, 20, 4, n_cat_list=[3])
    freeze_mixture_encoder_for_query(
        thawed, freeze_expression=False, freeze_batchnorm_encoder=False
    )
    assert thawed.coded_layer.linear.bias.requires_grad
    assert thawed.coded_layer.batch_norm.weight.requires_grad
    assert not thawed.coded_layer.code.requires_grad
