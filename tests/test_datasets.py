"""Real-data loaders: checksums, lookup order, binarisation and clear failures."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from scmixvae.datasets import (
    COUNT_DATASETS,
    ChecksumError,
    DatasetNotFoundError,
    binarize_static,
    dataset_files,
    fetch,
    load_counts,
    load_mnist_like,
    read_idx,
    registry,
    to_unit_interval,
)
from scmixvae.singlecell.validation import CountDataError, check_counts


def test_registry_checksums_match_the_shared_data(data_dir):
    listed = {}
    for line in (data_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name.removeprefix("./")] = digest
    for dataset in registry():
        for f in dataset_files(dataset):
            if f.name in listed:
                assert f.sha256 == listed[f.name], f.name
    shipped = {f.name for d in registry() for f in dataset_files(d)}
    assert set(listed) <= shipped  # every shared file is registered
    for dataset, meta in registry().items():
        assert meta["citation"] and meta["license"], dataset


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_mnist_like_shapes_and_labels(data_dir, dataset):
    images, labels = load_mnist_like(dataset, "test", data_dir=data_dir)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    x = to_unit_interval(images[:100])
    assert x.shape == (100, 784) and 0.0 <= x.min() and x.max() <= 1.0


def test_static_binarisation_is_reproducible(data_dir):
    images, _ = load_mnist_like("mnist", "test", data_dir=data_dir)
    x = to_unit_interval(images[:500])
    a, b, c = binarize_static(x, seed=3), binarize_static(x, seed=3), binarize_static(x, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert abs(a.mean() - x.mean()) < 0.01  # a Bernoulli draw of the intensities


@pytest.mark.parametrize("name", COUNT_DATASETS)
def test_count_datasets_hold_raw_counts(data_dir, name):
    adata = load_counts(name, data_dir=data_dir)
    assert sp.issparse(adata.X) and adata.n_obs > 2000
    check_counts(adata.X)
    assert (adata.layers["counts"] != adata.X).nnz == 0
    if registry()[name].get("labels"):
        assert adata.obs["cell_type"].nunique() >= 9


def test_corrupt_file_is_reported_not_read(data_dir, tmp_path):
    (registered,) = [f for f in dataset_files("mnist") if "t10k-labels" in f.name]
    target = tmp_path / registered.name
    target.parent.mkdir(parents=True)
    shutil.copy(data_dir / registered.name, target)
    with open(target, "r+b") as fh:  # truncate
        fh.truncate(target.stat().st_size // 2)
    with pytest.raises(ChecksumError, match="corrupt or truncated"):
        fetch(registered, data_dir=tmp_path)


def test_missing_file_offline_names_the_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("SCMIXVAE_OFFLINE", "1")
    monkeypatch.setenv("SCMIXVAE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    (registered,) = [f for f in dataset_files("mnist") if "t10k-labels" in f.name]
    with pytest.raises(DatasetNotFoundError, match="downloads are disabled"):
        fetch(registered, data_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown dataset"):
        dataset_files("imagenet")


def test_read_idx_rejects_truncated_payload(tmp_path):
    good = tmp_path / "ok-idx1-ubyte.gz"
    header = bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big")
    with gzip.open(good, "wb") as fh:
        fh.write(header + bytes(range(5)))
    assert read_idx(good).tolist() == [0, 1, 2, 3, 4]
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(header + bytes(range(3)))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[1.5, 2.5]]), "not whole numbers"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (sp.csr_matrix(np.array([[1.0, -2.0]])), "negative"),
        (np.zeros((0, 3)), "empty"),
    ],
)
def test_check_counts_names_the_problem(matrix, message):
    with pytest.raises(CountDataError, match=message):
        check_counts(matrix)


def test_check_counts_accepts_integer_floats_dense_and_sparse():
    m = np.array([[0, 3], [7, 1]], dtype=np.float32)
    check_counts(m)
    check_counts(sp.csr_matrix(m))
    check_counts(m.astype(np.int64))
