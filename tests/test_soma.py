"""Training and embedding from a TileDB-SOMA experiment (scmixvae.singlecell.soma, the CLI).

Skipped without the ``atlas`` extra (tiledbsoma, tiledbsoma-ml); CI installs it.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scvi
from scvi.data import synthetic_iid

pytest.importorskip("tiledbsoma_ml")
import tiledbsoma.io

from scmixvae import MixSCANVI, MixSCVI
from scmixvae.cli import main
from scmixvae.singlecell.soma import (
    DEFAULT_MEMORY_BUDGET,
    StoreChangedError,
    embed_soma,
    inference_datamodule,
    soma_datamodule,
)

QUIET = {"enable_progress_bar": False}


def _cells(n_genes: int = 100, seed: int = 0):
    scvi.settings.seed = seed
    adata = synthetic_iid(n_genes=n_genes)
    adata.X = sp.csr_matrix(adata.X.astype(np.float32))
    adata.obs["batch"] = adata.obs["batch"].astype(str)
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    return adata


def _store(path, adata):
    shutil.rmtree(path, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiledbsoma.io.from_anndata(str(path), adata, measurement_name="RNA")
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    adata = _cells()
    return _store(tmp_path_factory.mktemp("soma") / "exp", adata), adata


@pytest.fixture(scope="module")
def trained(store):
    uri, _ = store
    datamodule = soma_datamodule(uri, "batch", batch_size=64)
    model = MixSCVI(adata=None, registry=datamodule.registry, n_components=3, n_latent=4)
    model.train(max_epochs=2, datamodule=datamodule, **QUIET)
    return model


def test_embedding_streams_every_cell_in_store_order(store, trained):
    uri, adata = store
    embedding = embed_soma(trained, uri, batch_size=48)  # batches not aligned with reads
    assert list(embedding.obs_names) == list(adata.obs_names)
    np.testing.assert_array_equal(embedding.obs["soma_joinid"], np.arange(adata.n_obs))
    # the same weights on the same cells in memory give the same latent, cell by cell
    memory = adata.copy()
    MixSCVI.setup_anndata(memory, batch_key="batch")
    twin = MixSCVI(memory, n_components=3, n_latent=4)
    twin.module.load_state_dict(trained.module.state_dict())
    twin.is_trained_ = True
    np.testing.assert_allclose(
        embedding.obsm["X_mixscvi"], twin.get_latent_representation(), rtol=1e-5, atol=1e-6
    )


def test_the_registry_holds_gene_names_and_the_model_saves_and_loads(store, trained, tmp_path):
    uri, adata = store
    names = trained.registry["field_registries"]["X"]["state_registry"]["column_names"]
    assert names == list(adata.var_names)
    trained.save(str(tmp_path / "model"))  # the training datamodule, without naming it
    loaded = MixSCVI.load(str(tmp_path / "model"), adata=False)
    with pytest.raises(ValueError, match=r"pass datamodule=\.\.\. to save"):
        loaded.save(str(tmp_path / "again"))  # never trained here: no datamodule to default to
    assert not (tmp_path / "again").exists()
    np.testing.assert_allclose(
        embed_soma(loaded, uri).obsm["X_mixscvi"], embed_soma(trained, uri).obsm["X_mixscvi"]
    )


def test_mixscanvi_trains_and_predicts_from_the_store(store):
    uri, adata = store
    datamodule = soma_datamodule(uri, "batch", labels_key="labels", model_name="MixSCANVI")
    model = MixSCANVI(
        adata=None, registry=datamodule.registry, datamodule=datamodule, n_components=2
    )
    model.train(max_epochs=2, datamodule=datamodule, **QUIET)
    # scvi-tools recognises a labelled datamodule batch by its first keys; else no classifier
    assert model.history["train_classification_loss"].notna().all().all()
    loader = inference_datamodule(model, uri).inference_dataloader()
    predicted = model.predict(dataloader=loader)
    assert predicted.shape == (adata.n_obs,)
    assert set(predicted) <= set(adata.obs["labels"].astype(str))


def test_a_latent_prior_and_a_flow_train_from_disk_and_a_vampprior_is_refused(store):
    uri, _ = store
    datamodule = soma_datamodule(uri, "batch")
    model = MixSCVI(
        adata=None, registry=datamodule.registry, n_components=2, prior="mog", flow_steps=1
    )
    model.train(max_epochs=1, datamodule=datamodule, **QUIET)
    assert np.isfinite(embed_soma(model, uri).obsm["X_mixscvi"]).all()
    with pytest.raises(ValueError, match="prior='vamp' needs an AnnData"):
        MixSCVI(adata=None, registry=datamodule.registry, prior="vamp")


def test_bad_stores_get_one_line_errors(store, tmp_path):
    uri, _ = store
    with pytest.raises(FileNotFoundError, match="no SOMA experiment at"):
        soma_datamodule(tmp_path / "missing", "batch")
    with pytest.raises(KeyError, match="layer 'raw' is not an X layer"):
        soma_datamodule(uri, "batch", layer="raw")
    with pytest.raises(KeyError, match="measurement 'ATAC'"):
        soma_datamodule(uri, "batch", measurement="ATAC")
    with pytest.raises(KeyError, match=r"\['donor'\] not in the obs"):
        soma_datamodule(uri, "donor")
    with pytest.raises(ValueError, match="batch_key is required"):
        soma_datamodule(uri, [])
    with pytest.raises(ValueError, match="memory_budget must be at least 64 MiB"):
        soma_datamodule(uri, "batch", memory_budget=2**20)


def test_a_layer_of_normalised_values_is_refused_and_fractional_counts_warn(tmp_path):
    adata = _cells()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.multiply(1e4 / adata.X.sum(axis=1)), dtype=np.float32)
    uri = _store(tmp_path / "normalised", adata)
    with pytest.raises(ValueError, match=r"X layer 'data' .*first 2000 cells.*not counts"):
        soma_datamodule(uri, "batch")
    soma_datamodule(uri, "batch", layer="counts")  # the raw counts beside it are accepted
    soupx = _cells()
    soupx.X.data[0] = 1.5  # one corrected (fractional) count
    with pytest.warns(UserWarning, match="not all whole numbers"):
        soma_datamodule(_store(tmp_path / "soupx", soupx.copy()), "batch")


def test_reads_are_bounded_and_batches_match_scvi_tools_reading_every_cell(store):
    uri, adata = store
    datamodule = soma_datamodule(uri, "batch")
    config = datamodule.query.experiment.context.tiledb_config
    assert int(config["sm.mem.total_budget"]) == DEFAULT_MEMORY_BUDGET
    override = {"sm.mem.total_budget": 2**27}
    bounded = soma_datamodule(uri, "batch", tiledb_config=override)
    assert int(bounded.query.experiment.context.tiledb_config["sm.mem.total_budget"]) == 2**27
    # scvi-tools' own reading of the batch column (batch_labels=None inside its __init__)
    from scvi.dataloaders import TileDBDataModule

    upstream = TileDBDataModule(datamodule.query, batch_column_names=["batch"])
    assert datamodule.batch_labels == sorted(upstream.batch_labels)
    assert list(datamodule.batch_encoder.classes_) == list(upstream.batch_encoder.classes_)
    two = soma_datamodule(uri, ["batch", "labels"])
    expected = adata.obs["batch"].astype(str) + "//" + adata.obs["labels"].astype(str)
    assert two.batch_labels == sorted(expected.unique())


def test_a_store_with_other_genes_or_batches_is_refused(trained, tmp_path):
    other_genes = _cells(n_genes=90)
    with pytest.raises(ValueError, match="not the model's: 10 of its 100 genes missing"):
        embed_soma(trained, _store(tmp_path / "genes", other_genes))
    new_batch = _cells()
    new_batch.obs["batch"] = "batch_9"
    with pytest.raises(ValueError, match="not among the model's"):
        embed_soma(trained, _store(tmp_path / "batch", new_batch))


def test_a_store_changed_after_its_datamodule_was_made_is_refused(tmp_path):
    uri = _store(tmp_path / "exp", _cells())
    datamodule = soma_datamodule(uri, "batch")
    model = MixSCVI(adata=None, registry=datamodule.registry, n_components=2)
    _store(tmp_path / "exp", _cells()[:300].copy())  # rewritten with fewer cells
    with pytest.raises(StoreChangedError, match="changed after its datamodule was made"):
        model.train(max_epochs=1, datamodule=datamodule, **QUIET)


def test_cli_fits_a_soma_experiment_and_writes_only_the_embedding(store, tmp_path, capsys):
    uri, adata = store
    out = tmp_path / "embedding.h5ad"
    model_dir = str(tmp_path / "m")
    argv = ["fit", uri, str(out), "--batch-key", "batch", "--epochs", "1",
            "--n-components", "2", "--no-progress-bar", "--model-dir", model_dir]  # fmt: skip
    assert main(argv) == 0
    import anndata as ad

    written = ad.read_h5ad(out)
    assert written.n_vars == 0 and written.obsm["X_mixscvi"].shape == (adata.n_obs, 10)
    assert list(written.obs_names) == list(adata.obs_names)
    assert (tmp_path / "m" / "model.pt").is_file()
    bad = tmp_path / "bad.h5ad"
    assert main(["fit", uri, str(bad), "--layer", "raw", "--batch-key", "batch"]) == 2
    assert main(["fit", uri, str(bad)]) == 2
    assert "--batch-key is required" in capsys.readouterr().err
    assert not bad.exists()


def test_query_mapping_onto_a_reference_trained_from_a_store_is_refused(trained, tmp_path):
    query = synthetic_iid(n_genes=100)
    query.obs["batch"] = "new"
    trained.save(str(tmp_path / "ref"))
    for reference in (trained, str(tmp_path / "ref")):
        with pytest.raises(ValueError, match="reference trained from a datamodule"):
            MixSCVI.load_query_data(query, reference)
