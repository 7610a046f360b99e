"""The atlas maker of benchmarks/atlas: distinct thinned cells, written readable, both formats."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from scvi.data import synthetic_iid

from benchmarks.atlas.make_data import thinned_chunk, write_atlas, write_soma


@pytest.fixture
def source():
    adata = synthetic_iid(n_genes=50)
    adata.X = sp.csr_matrix(adata.X.astype(np.float32))
    return adata


def test_thinned_cells_never_exceed_their_source_and_are_distinct(source):
    block, rows = thinned_chunk(source, 300, np.random.default_rng(0))
    original = source.X[rows].toarray()
    thinned = block.toarray()
    assert (thinned <= original).all() and (thinned >= 0).all()
    assert thinned.sum() < original.sum()  # molecules were dropped
    assert np.allclose(thinned, np.round(thinned))
    assert len({row.tobytes() for row in thinned}) > 290  # distinct cells


def test_the_atlas_is_written_in_chunks_and_reads_back_in_both_formats(source, tmp_path):
    info = write_atlas(source, 1234, tmp_path / "atlas.h5ad", seed=1, chunk=500)
    written = ad.read_h5ad(tmp_path / "atlas.h5ad")
    assert written.shape == (1234, 50) and written.X.nnz == info["nnz"]
    assert set(written.obs["batch"]) <= set(source.obs["batch"].astype(str))
    assert not list(tmp_path.glob("*.partial*"))
    pytest.importorskip("tiledbsoma")
    import tiledbsoma

    write_soma(tmp_path / "atlas.h5ad", tmp_path / "atlas.soma")
    with tiledbsoma.Experiment.open(str(tmp_path / "atlas.soma")) as exp:
        assert exp.obs.count == 1234
        assert exp.ms["RNA"].X["data"].nnz == info["nnz"]


def test_the_throughput_report_names_each_read_budget_and_the_peak_growth():
    from argparse import Namespace

    from benchmarks.atlas.measure import _growth_lines, _store_budgets

    args = Namespace(stores=["memory", "soma"], memory_budgets=[512, 10240])
    assert _store_budgets(args) == [("memory", 512), ("soma", 512), ("soma", 10240)]
    rows = [
        {"store": "soma", "model": "S5", "memory_budget_mib": b, "n_cells": n, "peak_rss_gb": g}
        for b, n, g in [(512, 10, 2.0), (512, 20, 2.1), (10240, 10, 3.0), (10240, 20, 3.6)]
    ]
    lines = "\n".join(_growth_lines(rows))
    assert "soma (512 MiB reads), S5: 2.00 -> 2.10 GiB (+5%)" in lines
    assert "soma (10,240 MiB reads), S5: 3.00 -> 3.60 GiB (+20%)" in lines
