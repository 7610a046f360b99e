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
