"""Bad input gets a clear error; saves, crashes and resumes lose nothing; runs repeat exactly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from scmixvae import MixSCVI
from scmixvae.guards import TrainingDivergedError
from scmixvae.singlecell.safety import GeneMismatchError
from scmixvae.singlecell.validation import CountDataError


def _counts(n_cells=200, n_genes=50, seed=0, dense=False):
    rng = np.random.default_rng(seed)
    x = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(x if dense else sp.csr_matrix(x))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.obs["batch"] = np.where(np.arange(n_cells) % 2, "a", "b")
    adata.layers["counts"] = adata.X.copy()
    return adata


def _trained(adata, epochs=2, **kwargs):
    scvi.settings.seed = 0
    MixSCVI.setup_anndata(adata, layer="counts", **kwargs)
    model = MixSCVI(adata, n_components=2)
    model.train(max_epochs=epochs, batch_size=64, enable_progress_bar=False)
    return model


@pytest.mark.parametrize(
    ("value", "message"), [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")]
)
@pytest.mark.parametrize("dense", [True, False])
def test_count_problems_are_named(value, message, dense):
    adata = _counts(dense=dense)
    layer = adata.layers["counts"]
    if dense:
        layer[3, 4] = value
    else:
        layer.data[7] = value
    with pytest.raises(CountDataError, match=message):
        MixSCVI.setup_anndata(adata, layer="counts")


@pytest.mark.parametrize("dense", [True, False])
def test_normalised_data_is_refused_and_corrected_counts_warn(dense):
    import scanpy as sc

    adata = _counts(dense=dense)
    logged = adata.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    with pytest.raises(CountDataError, match="log-transformed"):
        MixSCVI.setup_anndata(logged)  # .X: nearly every value fractional
    normalised = adata.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    with pytest.raises(CountDataError, match="normalised"):
        MixSCVI.setup_anndata(normalised)
    # ambient-RNA correction subtracts fractional amounts from a few entries
    corrected = adata.copy()
    layer = corrected.layers["counts"]
    values = layer if dense else layer.data
    values.ravel()[::7] = np.maximum(values.ravel()[::7] - 0.3, 0)
    with pytest.warns(UserWarning, match="not all whole numbers"):
        MixSCVI.setup_anndata(corrected, layer="counts")
    model = MixSCVI(corrected, n_components=2)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()


def test_equal_cell_totals_with_fractions_are_refused():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 5, size=(50, 20)).astype(np.float64)
    # one fractional value per cell makes every cell sum to the same 100.5: 5 % of the values
    # are fractional (under the share rule), but equal totals give normalisation away
    x[:, 0] = 100.5 - x[:, 1:].sum(1)
    adata = ad.AnnData(x)
    with pytest.raises(CountDataError, match=r"every cell sums to 100\.5"):
        MixSCVI.setup_anndata(adata)


def test_missing_keys_empty_data_and_component_counts_are_named():
    adata = _counts()
    with pytest.raises(KeyError, match="'raw_counts'"):
        MixSCVI.setup_anndata(adata, layer="raw_counts")
    with pytest.raises(KeyError, match="'donor'"):
        MixSCVI.setup_anndata(adata, layer="counts", batch_key="donor")
    with pytest.raises(KeyError, match="'age'"):
        MixSCVI.setup_anndata(adata, layer="counts", continuous_covariate_keys=["age"])
    with pytest.raises(CountDataError, match="empty"):
        MixSCVI.setup_anndata(adata[:0].copy(), layer="counts")
    MixSCVI.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match="n_components"):
        MixSCVI(adata, n_components=0)
    with pytest.raises(ValueError, match="beyond the supported"):
        MixSCVI(adata, n_components=10_000)


def test_cells_and_genes_without_counts_warn_and_still_train():
    adata = _counts()
    counts = adata.layers["counts"].toarray()
    counts[5] = 0  # a cell without counts
    counts[:, 7] = 0  # a gene without counts
    adata.layers["counts"] = sp.csr_matrix(counts)
    with pytest.warns(UserWarning, match="1 cells") as record:
        model = _trained(adata)
    assert any("1 genes" in str(w.message) for w in record)
    z = model.get_latent_representation()
    assert np.isfinite(z).all()
    assert np.isfinite(model.history["train_loss"].to_numpy().astype(float)).all()


def test_dense_sparse_and_integer_dtypes_give_the_same_model():
    sparse_model = _trained(_counts())
    dense = _counts(dense=True)
    dense.layers["counts"] = dense.layers["counts"].astype(np.int64)
    dense_model = _trained(dense)
    np.testing.assert_allclose(
        sparse_model.get_latent_representation(),
        dense_model.get_latent_representation(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_query_data_is_checked(tmp_path):
    model = _trained(_counts(), batch_key="batch")
    unseen = _counts(seed=1)
    unseen.obs["batch"] = "c"
    with pytest.raises(ValueError, match="c"):
        model.get_latent_representation(unseen)
    reordered = _counts(seed=1)[:, ::-1].copy()
    with pytest.raises(GeneMismatchError, match="different order"):
        model.get_latent_representation(reordered)
    fewer = _counts(seed=1)[:, :40].copy()
    with pytest.raises(GeneMismatchError, match="10 missing"):
        model.get_latent_representation(fewer)
    bad = _counts(seed=1)
    bad.layers["counts"] = bad.layers["counts"] * 0.37
    with pytest.raises(CountDataError, match="not whole numbers"):
        model.get_latent_representation(bad)

    model.save(tmp_path / "model")
    with pytest.raises(GeneMismatchError, match="different order"):
        MixSCVI.load(tmp_path / "model", adata=reordered)
    renamed = _counts()
    renamed.var_names = [f"x{i}" for i in range(renamed.n_vars)]
    with pytest.raises(GeneMismatchError, match="50 missing"):
        MixSCVI.load(tmp_path / "model", adata=renamed)


def test_a_save_killed_midway_leaves_the_previous_model_loadable(tmp_path):
    adata = _counts(n_genes=2000)
    adata.write_h5ad(tmp_path / "data.h5ad")
    scvi.settings.seed = 0
    MixSCVI.setup_anndata(adata, layer="counts")
    model = MixSCVI(adata, n_components=16, n_hidden=512)  # large enough for a slow save
    model.is_trained_ = True  # the weights are what matters here, not training
    model.save(tmp_path / "model")
    reference = model.get_latent_representation()
    script = textwrap.dedent(
        f"""
        import anndata as ad
        from scmixvae import MixSCVI
        adata = ad.read_h5ad("{tmp_path / "data.h5ad"}")
        model = MixSCVI.load("{tmp_path / "model"}", adata=adata)
        print("ready", flush=True)
        while True:
            model.save("{tmp_path / "model"}", overwrite=True)
        """
    )
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for line in proc.stdout:  # scvi-tools logs to stdout while loading
            if line.strip() == b"ready":
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = MixSCVI.load(tmp_path / "model", adata=adata)
        np.testing.assert_array_equal(loaded.get_latent_representation(), reference)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.pt"]


def test_nan_loss_stops_training_and_restores_the_last_good_weights():
    adata = _counts()
    scvi.settings.seed = 0
    MixSCVI.setup_anndata(adata, layer="counts")
    model = MixSCVI(adata, n_components=2)
    calls = {"n": 0}
    original_loss = model.module.loss

    def loss_turning_nan(*args, **kwargs):
        out = original_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 8:  # 4 training steps per epoch: NaN in the third epoch
            out.loss = out.loss * float("nan")
        return out

    model.module.loss = loss_turning_nan
    with pytest.raises(TrainingDivergedError, match="epoch 3") as err:
        model.train(max_epochs=5, batch_size=64, train_size=1.0, enable_progress_bar=False)
    assert "end of epoch 2" in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.module.parameters())
    model.module.loss = original_loss
    assert np.isfinite(model.get_latent_representation()).all()


def test_same_seed_same_model():
    a = _trained(_counts(), epochs=3).get_latent_representation()
    b = _trained(_counts(), epochs=3).get_latent_representation()
    np.testing.assert_array_equal(a, b)


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    def fresh():
        scvi.settings.seed = 0
        adata = _counts()
        MixSCVI.setup_anndata(adata, layer="counts")
        return MixSCVI(adata, n_components=2)

    common = {"batch_size": 64, "enable_progress_bar": False, "check_val_every_n_epoch": 1}
    straight = fresh()
    straight.train(max_epochs=4, **common)

    interrupted = fresh()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1)
    interrupted.train(max_epochs=2, callbacks=[checkpoints], **common)
    resumed = fresh()
    resumed.train(max_epochs=4, ckpt_path=str(tmp_path / "last.ckpt"), **common)
    np.testing.assert_allclose(
        resumed.get_latent_representation(),
        straight.get_latent_representation(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_backed_anndata_trains_like_in_memory(tmp_path):
    in_memory = _counts()
    del in_memory.layers["counts"]
    in_memory.write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    elbos = []
    for adata in (in_memory, backed):
        scvi.settings.seed = 0
        MixSCVI.setup_anndata(adata)
        model = MixSCVI(adata, n_components=2)
        model.train(max_epochs=5, batch_size=64, enable_progress_bar=False)
        assert np.isfinite(model.get_latent_representation()).all()
        elbos.append(float(model.get_elbo()))
    # scvi-tools draws minibatches from disk in another order: a comparable model, not equal
    assert elbos[1] == pytest.approx(elbos[0], rel=0.03)


def test_a_saved_model_holds_no_data(tmp_path):
    adata = _counts(n_cells=2000, n_genes=500)
    model = _trained(adata, epochs=1, batch_key="batch")
    model.save(tmp_path / "model")
    saved = torch.load(tmp_path / "model" / "model.pt", map_location="cpu", weights_only=False)

    def arrays(value, path="attr_dict"):
        if isinstance(value, np.ndarray | sp.spmatrix | sp.sparray) and value.size > 1000:
            yield path
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from arrays(item, f"{path}[{key!r}]")

    found = [path for path in arrays(saved["attr_dict"]) if not path.endswith("_indices_']")]
    assert found == []  # the train/validation/test split indices aside, as SCVI saves them
    setup_args = saved["attr_dict"]["registry_"]["setup_args"]
    assert set(setup_args) == {
        "layer",
        "batch_key",
        "labels_key",
        "size_factor_key",
        "categorical_covariate_keys",
        "continuous_covariate_keys",
    }
    # the weights and the gene names only: far smaller than the counts (2,000 x 500)
    counts_bytes = adata.layers["counts"].data.nbytes
    assert (tmp_path / "model" / "model.pt").stat().st_size < counts_bytes
