"""Checks that a matrix holds raw counts, with errors that name the problem."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

# exact types: a subclass (e.g. scvi-tools' AnnCollection layer view) may hold only a sample
_IN_MEMORY = (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array,
              sp.coo_array)  # fmt: skip


class CountDataError(ValueError):
    """The matrix given as counts is not a matrix of raw counts."""


def _row_blocks(matrix, chunk_rows: int):
    """In-memory blocks of rows: an in-memory matrix whole, a backed one a block at a time."""
    if type(matrix) in _IN_MEMORY or isinstance(matrix, np.ndarray):
        yield matrix
        return
    for start in range(0, matrix.shape[0], chunk_rows):  # backed (on-disk) or array-like
        yield matrix[start : start + chunk_rows]


def _value_blocks(matrix, chunk_rows: int, chunk_values: int):
    """The stored values in blocks, so checks never allocate a full-size temporary."""
    for block in _row_blocks(matrix, chunk_rows):
        if sp.issparse(block):
            data = block.data  # stored values only: zeros are counts
            for start in range(0, len(data), chunk_values):
                yield data[start : start + chunk_values]
        else:
            block = np.asarray(block)
            for start in range(0, block.shape[0], chunk_rows):
                yield block[start : start + chunk_rows]


# beyond this share of non-integer stored values a matrix is not counts but normalised data
MAX_NON_INTEGER_SHARE = 0.5


def check_counts(
    matrix,
    where: str = "adata.X",
    chunk_rows: int = 50_000,
    chunk_values: int = 10_000_000,
    hint: str | None = None,
) -> None:
    """Raise :class:`CountDataError` unless ``matrix`` holds counts.

    Refused, with the problem named: NaN or infinite values, negative values, non-numeric
    data, and matrices that are clearly normalised or log-transformed: more than half of the
    non-zero values non-integer, or non-integer values with every cell summing to the same
    total (``sc.pp.normalize_total``'s output). Mostly-integer matrices with some fractional
    values, as ambient-RNA correction (e.g. SoupX) produces, are accepted with one warning, as
    scvi-tools does: the likelihoods evaluate at non-integer values, but the model is built
    for counts.

    Dense and sparse matrices are accepted, float dtypes included; sparse matrices are checked
    on their stored values only, in blocks, and dense or backed ones a block of rows at a time,
    so nothing is densified or copied whole.

    Parameters
    ----------
    matrix
        Cells x genes: an array, a sparse matrix, a backed dataset, or anything with ``shape``
        that returns rows when sliced.
    where
        How to name the matrix in the message (``"adata.layers['counts']"``).
    chunk_rows
        Rows checked at a time for dense or backed input.
    chunk_values
        Stored values checked at a time for sparse input.
    hint
        What to do about a matrix that is not counts (default: the ``setup_anndata`` layer).
    """
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise CountDataError(f"{where} is empty (shape {tuple(matrix.shape)}).")
    n_values, n_fractional, example = 0, 0, None
    for values in _value_blocks(matrix, chunk_rows, chunk_values):
        if not np.issubdtype(values.dtype, np.number):
            raise CountDataError(f"{where} has non-numeric dtype {values.dtype}.")
        if np.issubdtype(values.dtype, np.floating):
            if not np.isfinite(values).all():
                raise CountDataError(
                    f"{where} contains NaN or infinite values; counts must be finite."
                )
            fractional = values != np.round(values)
            n_fractional += int(fractional.sum())
            if example is None and fractional.any():
                example = float(values[fractional].flat[0])
        if (values < 0).any():
            raise CountDataError(f"{where} contains negative values; counts must be >= 0.")
        n_values += int(np.count_nonzero(values))
    if not n_fractional:
        return
    share = n_fractional / max(1, n_values)
    hint = hint or (
        "MixSCVI models raw counts. Pass the raw counts (often adata.layers['counts'] or "
        "adata.raw) via setup_anndata(layer=...)."
    )
    if share > MAX_NON_INTEGER_SHARE:
        raise CountDataError(
            f"{where} looks normalised or log-transformed, not counts: {share:.0%} of its "
            f"non-zero values are not whole numbers (e.g. {example:.4g}). {hint}"
        )
    totals = _cell_totals(matrix, chunk_rows)
    if len(totals) > 1 and np.allclose(totals, totals[0], rtol=1e-4):
        raise CountDataError(
            f"{where} looks normalised, not counts: it has non-integer values and every cell "
            f"sums to {totals[0]:.6g} (as after sc.pp.normalize_total). {hint}"
        )
    warnings.warn(
        f"{where} is not all whole numbers ({share:.1%} of its non-zero values are fractional, "
        f"e.g. {example:.4g}), as after ambient-RNA correction. MixSCVI's likelihoods are for "
        "counts; it trains on these values as they are.",
        UserWarning,
        stacklevel=3,
    )


def _cell_totals(matrix, chunk_rows: int = 50_000) -> np.ndarray:
    return np.concatenate(
        [np.asarray(block.sum(axis=1)).ravel() for block in _row_blocks(matrix, chunk_rows)]
    )


def warn_empty_cells_and_genes(
    matrix, where: str = "adata.X", chunk_rows: int = 50_000
) -> tuple[int, int]:
    """Warn about cells and genes without a single count; return how many of each.

    Both are kept: a cell without counts gets a library size of one count (instead of
    ``log 0``), a gene without counts costs compute but carries no signal. Filtering them
    (``sc.pp.filter_cells(adata, min_counts=1)``, ``sc.pp.filter_genes(adata, min_cells=1)``)
    is usually better.
    """
    cell_totals, gene_totals = [], 0
    for block in _row_blocks(matrix, chunk_rows):
        cell_totals.append(np.asarray(block.sum(axis=1)).ravel())
        gene_totals = gene_totals + np.asarray(block.sum(axis=0)).ravel()
    cell_totals = np.concatenate(cell_totals)
    n_cells, n_genes = int((cell_totals == 0).sum()), int((gene_totals == 0).sum())
    if n_cells:
        warnings.warn(
            f"{n_cells} cells in {where} have no counts; they are kept with a library size of "
            "one count. Remove them with sc.pp.filter_cells(adata, min_counts=1).",
            UserWarning,
            stacklevel=3,
        )
    if n_genes:
        warnings.warn(
            f"{n_genes} genes in {where} have no counts in any cell; they carry no signal. "
            "Remove them with sc.pp.filter_genes(adata, min_cells=1).",
            UserWarning,
            stacklevel=3,
        )
    return n_cells, n_genes


def check_labels_column(
    adata, labels_key: str | None, unlabeled_category: str, require_labelled: bool = True
) -> None:
    """Raise a one-line error for a labels column a semi-supervised model cannot learn from.

    The column must exist and, with ``require_labelled`` (a reference; a query may be wholly
    unlabelled), hold at least one labelled cell. An ``unlabeled_category`` absent
    from the column is allowed (every cell labelled) unless it matches one of the column's
    values up to case and spaces, a typo that would turn the unlabeled cells into a cell type.
    """
    if labels_key is None:
        raise ValueError("a labels_key is needed: the adata.obs column holding the cell labels.")
    if labels_key not in adata.obs:
        raise KeyError(
            f"labels column {labels_key!r} is not in adata.obs (columns: "
            f"{list(adata.obs.columns)})."
        )
    values = adata.obs[labels_key].astype(str)
    present = set(values.unique())
    if require_labelled and present <= {str(unlabeled_category)}:
        raise ValueError(
            f"adata.obs[{labels_key!r}] holds only the unlabeled category "
            f"{unlabeled_category!r}: at least one labelled cell is needed."
        )
    if str(unlabeled_category) not in present:
        folded = {v.strip().casefold(): v for v in present}
        near = folded.get(str(unlabeled_category).strip().casefold())
        if near is not None:
            raise ValueError(
                f"unlabeled_category {unlabeled_category!r} is not in adata.obs[{labels_key!r}], "
                f"which holds {near!r}: pass unlabeled_category={near!r}, or those cells "
                "become a cell type."
            )
