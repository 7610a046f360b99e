"""``MixSCVI.train(device_data=True)``: counts copied to the device once, refusals named."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

from scmixvae import MixSCANVI, MixSCVI
from scmixvae.singlecell import device_data


@pytest.fixture
def adata():
    adata = scvi.data.synthetic_iid(batch_size=200, n_genes=40, n_labels=3)
    MixSCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    return adata


def _train(adata, **kwargs) -> MixSCVI:
    scvi.settings.seed = 0
    model = MixSCVI(adata, n_components=3)
    model.train(max_epochs=4, batch_size=64, accelerator="cpu", enable_progress_bar=False,
                check_val_every_n_epoch=1, **kwargs)  # fmt: skip
    return model


def _record_built(monkeypatch, name: str) -> list:
    """Every instance of ``device_data.<name>`` built while the test runs."""
    built = []
    original = getattr(device_data, name)

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(device_data, name, spy)
    return built


def test_device_data_serves_the_same_split_from_one_copy_and_learns(adata, monkeypatch):
    built = _record_built(monkeypatch, "DeviceBackedDataSplitter")
    host, resident = _train(adata), _train(adata, device_data=True)
    (splitter,) = built
    # the whole training set sits in one tensor on the device, served by indexing
    assert splitter.train_tensor_dict["X"].shape == (len(resident.train_indices), adata.n_vars)
    assert splitter.shuffle and splitter.batch_size == 64
    np.testing.assert_array_equal(np.sort(host.train_indices), np.sort(resident.train_indices))
    np.testing.assert_array_equal(
        np.sort(host.validation_indices), np.sort(resident.validation_indices)
    )
    elbo = resident.history["elbo_validation"]["elbo_validation"].to_numpy()
    assert len(elbo) == 4 and elbo[-1] < elbo[0]
    # as good a model as the host loader's after the same epochs (another minibatch order)
    host_elbo = host.history["elbo_validation"]["elbo_validation"].to_numpy()
    assert abs(elbo[-1] - host_elbo[-1]) < 0.05 * abs(host_elbo[-1])


def test_device_data_refuses_what_it_cannot_do_before_copying(adata, monkeypatch):
    model = MixSCVI(adata, n_components=2)
    with pytest.raises(ValueError, match="not both"):
        model.train(max_epochs=1, device_data=True, datamodule=object())
    with pytest.raises(ValueError, match="load_sparse_tensor"):
        model.train(max_epochs=1, device_data=True, load_sparse_tensor=True)
    with pytest.raises(ValueError, match="ddp"):
        model.train(max_epochs=1, device_data=True, strategy="ddp_find_unused_parameters_true")
    with pytest.raises(ValueError, match="by keyword"):
        model.train(1, device_data=True)
    # a matrix that does not fit: the sizes and the way out are named, nothing is trained
    monkeypatch.setattr(device_data, "free_memory_bytes", lambda device: 10_000)
    with pytest.raises(
        ValueError, match=r"needs 0\.\d+ MB on cpu .*\(400 cells x 40 genes\).* 0\.01 MB free"
    ):
        model.train(max_epochs=1, device_data=True, accelerator="cpu")
    assert not model.is_trained


def test_dense_size_counts_every_registered_field(adata):
    model = MixSCVI(adata, n_components=2)
    # the counts plus one column per other registered field (batch, labels), float32 each
    fields = len(model.adata_manager.data_registry)
    assert device_data.dense_bytes(model) == adata.n_obs * (adata.n_vars + fields - 1) * 4
    assert device_data.free_memory_bytes(torch.device("cpu")) > 0


def _train_scanvi(base: MixSCVI, **kwargs) -> MixSCANVI:
    scvi.settings.seed = 0
    model = MixSCANVI.from_scvi_model(base, unlabeled_category="label_0")
    model.train(max_epochs=3, batch_size=64, accelerator="cpu", enable_progress_bar=False,
                check_val_every_n_epoch=1, **kwargs)  # fmt: skip
    return model


@pytest.fixture
def semisupervised_built(monkeypatch) -> list:
    """Every semi-supervised device splitter that ``train(device_data=True)`` builds."""
    return _record_built(monkeypatch, "SemiSupervisedDeviceBackedDataSplitter")


def test_mixscanvi_device_data_keeps_the_split_and_trains_as_well(adata, semisupervised_built):
    base = _train(adata)
    host, resident = _train_scanvi(base), _train_scanvi(base, device_data=True)
    (splitter,) = semisupervised_built  # the host run built none
    tensors, per_label = splitter._resident["train"]
    assert tensors["X"].shape == (len(resident.train_indices), adata.n_vars)
    assert len(per_label) == 2  # label_1 and label_2; label_0 is the unlabelled category
    np.testing.assert_array_equal(np.sort(host.train_indices), np.sort(resident.train_indices))
    np.testing.assert_array_equal(
        np.sort(host.validation_indices), np.sort(resident.validation_indices)
    )
    for key in ("elbo_validation", "validation_classification_loss"):
        mine = resident.history[key][key].to_numpy(dtype=float)
        theirs = host.history[key][key].to_numpy(dtype=float)
        assert len(mine) == 3 and np.isfinite(mine).all()
        assert abs(mine[-1] - theirs[-1]) < 0.1 * abs(theirs[-1]), key
    # scANVI logs a classification loss only for steps that had a labelled minibatch
    trained = resident.history["train_classification_loss"]["train_classification_loss"]
    assert len(trained) == 3 and (trained.to_numpy(dtype=float) > 0).all()


def test_semisupervised_device_batches_pair_every_cell_with_labelled_cells(adata):
    model = MixSCANVI.from_scvi_model(_train(adata), unlabeled_category="label_0")
    kwargs = {"batch_size": 50, "accelerator": "cpu", "n_samples_per_label": 20}
    splitter = device_data.device_backed_datamodule(model, kwargs)
    assert kwargs == {"accelerator": "cpu", "n_samples_per_label": 20}  # the splitter's taken
    splitter.setup()
    x = torch.as_tensor(adata.X, dtype=torch.float32)
    unlabelled = model.adata_manager.get_state_registry("labels")
    code = list(unlabelled.categorical_mapping).index(unlabelled.unlabeled_category)

    batches = splitter.train_dataloader()
    pairs = list(batches)
    assert len(pairs) == len(batches) == int(np.ceil(len(splitter.train_idx) / 50))
    # the full batches run through every training cell once
    full = torch.cat([p[0]["X"] for p in pairs])
    assert torch.equal(full.sum(0), x[splitter.train_idx].sum(0))
    assert full.shape[0] == len(splitter.train_idx)
    # the labelled batches: only labelled cells, at most 20 of each label per epoch
    first_epoch = torch.cat([p[1]["labels"] for p in pairs]).ravel()
    assert (first_epoch != code).all()
    drawn = batches.labelled
    assert [int((first_epoch[: len(drawn)] == c).sum()) for c in first_epoch.unique()] == [20, 20]
    batches.resample_labels()  # scvi-tools' SubSampleLabels callback, every epoch
    assert not torch.equal(torch.sort(batches.labelled).values, torch.sort(drawn).values)

    # without a subsample, every labelled training cell, in a fixed order for validation
    whole = device_data.device_backed_datamodule(model, {"accelerator": "cpu"})
    whole.setup()
    n_labelled = int((model.adata.obs["labels"].iloc[whole.train_idx] != "label_0").sum())
    assert len(whole.train_dataloader().labelled) == n_labelled
    val = [p[0]["X"] for p in whole.val_dataloader()]
    assert torch.equal(torch.cat(val), x[whole.val_idx])
    # the host splitter's drop_last leaves out the short last training batch here too
    kwargs = {"accelerator": "cpu", "batch_size": 50, "datasplitter_kwargs": {"drop_last": True}}
    dropping = device_data.device_backed_datamodule(model, kwargs)
    dropping.setup()
    sizes = [p[0]["X"].shape[0] for p in dropping.train_dataloader()]
    assert sizes == [50] * (len(dropping.train_idx) // 50)


def test_mixscanvi_device_data_maps_an_unlabelled_query(adata, semisupervised_built):
    reference = _train_scanvi(_train(adata))
    query = scvi.data.synthetic_iid(batch_size=100, n_genes=40, n_labels=3)
    query.obs["labels"] = "label_0"  # the reference's unlabelled category: nothing is known
    MixSCANVI.prepare_query_anndata(query, reference)
    mapped = MixSCANVI.load_query_data(query, reference)
    mapped.train(max_epochs=2, batch_size=64, accelerator="cpu", enable_progress_bar=False,
                 device_data=True, plan_kwargs={"weight_decay": 0.0})  # fmt: skip
    assert np.isfinite(mapped.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)).all()
    assert mapped.predict().shape == (query.n_obs,)
    # the query went through the device path, as plain minibatches: it has no labelled cells
    (splitter,) = semisupervised_built  # the reference trained on the host
    assert splitter._resident["train"][1] == []
    assert isinstance(next(iter(splitter.train_dataloader())), dict)
