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


def test_device_data_serves_the_same_split_from_one_copy_and_learns(adata, monkeypatch):
    built = []
    original = device_data.DeviceBackedDataSplitter

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(device_data, "DeviceBackedDataSplitter", spy)
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


def test_mixscanvi_refuses_device_data_and_names_why(adata):
    base = _train(adata)
    model = MixSCANVI.from_scvi_model(base, unlabeled_category="label_0")
    with pytest.raises(ValueError, match="SemiSupervisedDataSplitter"):
        model.train(max_epochs=1, device_data=True)
