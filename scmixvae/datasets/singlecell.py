"""Single-cell count datasets from the data directory, as AnnData with raw counts."""

from __future__ import annotations

import os

import anndata as ad

from .registry import dataset_files, fetch, registry

COUNT_DATASETS = ("pbmc3k", "sorted_pbmc", "mouse_bladder", "worm_neuron", "kang_ifnb")


def load_counts(
    name: str,
    data_dir: str | os.PathLike | None = None,
    counts_layer: str | None = "counts",
) -> ad.AnnData:
    """Load a registered single-cell dataset.

    Parameters
    ----------
    name
        One of ``pbmc3k``, ``sorted_pbmc``, ``mouse_bladder``, ``worm_neuron``, ``kang_ifnb``
        (see ``scmixvae.datasets.registry()`` for provenance), or ``cortex`` (download only).
    data_dir
        Directory holding the ``.h5ad`` files; see :mod:`scmixvae.datasets.registry`.
    counts_layer
        Also keep the raw counts in ``adata.layers[counts_layer]`` so ``.X`` can be normalised
        for scanpy without losing them. ``None`` keeps them in ``.X`` only.

    Returns
    -------
    AnnData with integer UMI counts in ``.X`` (float32 CSR), labels in ``.obs`` where the
    dataset has them, and ``.uns['dataset']`` naming the source and citation.
    """
    if name == "cortex":
        return load_cortex(data_dir)
    if name not in COUNT_DATASETS:
        raise KeyError(f"unknown count dataset {name!r}; choose from {', '.join(COUNT_DATASETS)}.")
    (registered,) = dataset_files(name)
    adata = ad.read_h5ad(fetch(registered, data_dir))
    meta = registry()[name]
    adata.uns["dataset"] = {
        "name": name,
        "title": meta["title"],
        "citation": meta["citation"],
        "license": meta["license"],
    }
    if meta.get("labels") and meta["labels"] not in adata.obs:
        raise ValueError(f"{name}: expected labels in adata.obs[{meta['labels']!r}].")
    for key in ("cell_type", "condition"):
        if key in adata.obs:
            adata.obs[key] = adata.obs[key].astype(str).astype("category")
    if counts_layer is not None:
        adata.layers[counts_layer] = adata.X.copy()
    return adata


def load_cortex(data_dir: str | os.PathLike | None = None) -> ad.AnnData:
    """Zeisel et al. 2015 mouse cortex (3005 cells), parsed by :func:`scvi.data.cortex`.

    Not shipped in the shared data directory; needs the original text file in ``data_dir`` or a
    network connection (it has no registered checksum, so it is not downloaded unverified).
    """
    import scvi

    (registered,) = dataset_files("cortex")
    path = fetch(registered, data_dir, check=False)
    adata = scvi.data.cortex(save_path=str(path.parent))
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.layers["counts"] = adata.X.copy()
    return adata
