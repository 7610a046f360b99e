"""Each workaround in scmixvae.singlecell._compat, checked against the installed scvi-tools.

These fail when scvi-tools changes the behaviour a workaround relies on.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings

import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from packaging.specifiers import SpecifierSet
from scvi.data import synthetic_iid

from scmixvae import MixSCVI
from scmixvae.singlecell import _compat


def test_installed_scvi_tools_is_in_the_tested_range():
    requirement = next(
        r for r in importlib.metadata.requires("scmixvae") if r.startswith("scvi-tools")
    )
    allowed = SpecifierSet(re.sub(r"^scvi-tools\s*", "", requirement).split(";")[0])
    assert scvi.__version__ in allowed


def test_models_without_data_set_what_scvi_sets():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = scvi.model.SCVI()
        ours = MixSCVI(n_components=2)
    missing = set(vars(reference)) - set(vars(ours))
    assert not missing, f"scvi-tools now sets {missing} for models without data"
    assert ours.module is None and ours.adata is None and ours._module_init_on_train


def test_plain_model_checkpoints_write_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(scvi.settings, "logging_dir", str(tmp_path / "scvi_log"))
    adata = synthetic_iid()
    MixSCVI.setup_anndata(adata)
    model = MixSCVI(adata, n_components=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    model.train(max_epochs=2, callbacks=[checkpoint], enable_progress_bar=False)
    assert type(checkpoint) is ModelCheckpoint  # the user's callback is left as it was
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert not (tmp_path / "scvi_log").exists()


def test_minify_type_reads_what_scvi_records():
    from scvi.data._utils import _get_adata_minify_type

    adata = synthetic_iid()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    qzm, qzv = model.get_latent_representation(return_dist=True)
    model.adata.obsm["X_latent_qzm"], model.adata.obsm["X_latent_qzv"] = qzm, qzv
    assert _compat.minify_type(model.adata) is None
    model.minify_adata()
    assert _compat.minify_type(model.adata) == _get_adata_minify_type(model.adata)
    assert _compat.minify_type(model.adata) is not None


def test_anncollection_adapter_still_lacks_what_the_checks_need():
    import scipy.sparse as sp
    from anndata.experimental import AnnCollection
    from scvi.dataloaders import CollectionAdapter

    data = synthetic_iid()
    data.layers["counts"] = sp.csr_matrix(data.X)
    adapter = CollectionAdapter(AnnCollection([data[:200].copy(), data[200:].copy()]))
    assert _compat.is_collection(adapter) and not _compat.is_collection(data)
    assert "counts" in _compat.layer_names(adapter)
    rows = _compat.count_matrix(adapter, "counts")
    assert rows.shape == (400, data.n_vars)
    assert (rows[150:250] != data.layers["counts"][150:250]).nnz == 0
    # scvi-tools' own view of the layer holds only a sample of the cells' values
    assert len(adapter.layers["counts"].data) < data.layers["counts"].nnz


def test_view_anndata_setup_works_with_the_installed_rich(capsys):
    adata = synthetic_iid()
    MixSCVI.setup_anndata(adata, batch_key="batch")
    MixSCVI(adata, n_components=2).view_anndata_setup()
    assert "batch" in capsys.readouterr().out


def test_training_device_resolves_as_scvi_tools_device_backed_splitter():
    from scvi.dataloaders import DeviceBackedDataSplitter

    adata = synthetic_iid(batch_size=20, n_genes=10)
    MixSCVI.setup_anndata(adata)
    manager = MixSCVI(adata).adata_manager
    for accelerator, device in (("cpu", "auto"), ("auto", "auto"), ("cpu", 1)):
        theirs = DeviceBackedDataSplitter(manager, accelerator=accelerator, device=device).device
        assert _compat.training_device(accelerator, device) == theirs
        assert isinstance(theirs, torch.device)


def test_scvi_tools_still_has_the_initialiser_datamodule_loading_uses():
    """_compat.load_datamodule_model builds the model with this scvi-tools internal."""
    import inspect

    from scvi.model.base import _save_load

    assert list(inspect.signature(_save_load._initialize_model).parameters) == [
        "cls", "adata", "registry", "attr_dict", "datamodule",
    ]  # fmt: skip
