"""An atlas of distinct cells made from Kang's 14k PBMCs by binomial thinning.

Each new cell copies the counts of a random Kang cell (its 2,000 most variable genes) and keeps
every molecule with a probability drawn per cell from U(0.3, 1): real expression programmes,
real sparsity, no two cells alike. Its batch is the source cell's condition (ctrl / stim).
Each size is written chunk by chunk, so memory stays near one chunk, as:

- ``atlas_<n>.h5ad`` (CSR float32 counts in X; read it backed with ``backed="r"``),
- ``atlas_<n>.soma`` (a TileDB-SOMA experiment, measurement ``RNA``, X layer ``data``),

plus ``heldout_5000.h5ad``: 5,000 further cells (another seed) for held-out likelihoods.

Usage::

    python -m benchmarks.atlas.make_data --cells 100000 1000000 2000000 --out /data/atlas
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

CHUNK = 50_000


def kang_source(n_genes: int = 2000):
    """Kang's counts on their ``n_genes`` most variable genes (seurat_v3), CSR float32."""
    import scanpy as sc

    from scmixvae.datasets import load_counts

    adata = load_counts("kang_ifnb")
    sc.pp.highly_variable_genes(adata, n_top_genes=n_genes, flavor="seurat_v3", layer="counts")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.X = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    del adata.layers["counts"]
    adata.obs["batch"] = adata.obs["condition"].astype(str)
    return adata


def thinned_chunk(source, n_cells: int, rng: np.random.Generator):
    """``n_cells`` new cells: random source rows, each molecule kept with a per-cell rate."""
    rows = rng.integers(0, source.n_obs, size=n_cells)
    block = source.X[rows].tocsr()
    keep = rng.uniform(0.3, 1.0, size=n_cells)
    rates = np.repeat(keep, np.diff(block.indptr))
    block.data = rng.binomial(block.data.astype(np.int64), rates).astype(np.float32)
    block.eliminate_zeros()
    return block, rows


def write_atlas(source, n_cells: int, path: Path, seed: int, chunk: int = CHUNK) -> dict:
    """Write ``n_cells`` thinned cells to the h5ad ``path`` chunk by chunk (atomically)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial.h5ad")
    batches, nnz = [], 0
    with h5py.File(partial, "w") as f:
        for start in range(0, n_cells, chunk):
            block, rows = thinned_chunk(source, min(chunk, n_cells - start), rng)
            batches.append(source.obs["batch"].to_numpy()[rows])
            nnz += block.nnz
            if start == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
        obs = pd.DataFrame(
            {"batch": pd.Categorical(np.concatenate(batches))},
            index=[f"{path.stem}_{i}" for i in range(n_cells)],
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", source.var[[]].copy())
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    ad.read_h5ad(partial, backed="r").file.close()  # it reads as an AnnData
    partial.replace(path)
    return {"cells": n_cells, "genes": source.n_vars, "nnz": int(nnz)}


def write_soma(h5ad: Path, uri: Path) -> None:
    """The same cells as a TileDB-SOMA experiment (tiledbsoma reads the h5ad backed)."""
    import tiledbsoma.io

    partial = uri.with_name(uri.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tiledbsoma.io.from_h5ad(str(partial), h5ad, measurement_name="RNA")
    shutil.rmtree(uri, ignore_errors=True)
    partial.rename(uri)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True, help="a folder outside the repo")
    parser.add_argument("--no-soma", action="store_true", help="write the h5ad files only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    source = kang_source(args.genes)
    made = {}
    for n_cells, seed in [(5000, 99), *[(n, i) for i, n in enumerate(args.cells)]]:
        name = "heldout_5000" if seed == 99 else f"atlas_{n_cells}"
        start = time.perf_counter()
        made[name] = write_atlas(source, n_cells, args.out / f"{name}.h5ad", seed)
        if not args.no_soma and seed != 99:
            write_soma(args.out / f"{name}.h5ad", args.out / f"{name}.soma")
        made[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, made[name], flush=True)
    (args.out / "atlas.json").write_text(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
