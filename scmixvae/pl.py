"""Plots for mixture models, following scanpy's conventions (``ax=``, ``show=``, ``save=``).

Each function draws into ``ax`` (a new figure when ``None``), saves to ``save`` if given
(written atomically), shows the figure when ``show`` is true (default: only in interactive
sessions) and returns the axes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .io import atomic_path


def _finish(ax: Axes | Sequence[Axes], show: bool | None, save: str | os.PathLike | None):
    axes = np.atleast_1d(ax)
    fig = axes[0].figure
    if save is not None:
        path = Path(save)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    if show is None:
        show = matplotlib.is_interactive()
    if show:
        plt.show()
    return ax


def _history_series(history: dict[str, pd.DataFrame], key: str) -> pd.Series | None:
    if key not in history or len(history[key]) == 0:
        return None
    frame = history[key]
    return pd.Series(frame.iloc[:, 0].astype(float).to_numpy(), index=frame.index)


def training_curves(
    model: Any,
    keys: Sequence[str] = ("elbo_train", "elbo_validation", "jsd_train"),
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Sequence[Axes]:
    """MISELBO (as the negative loss scvi-tools logs) and the component divergence per epoch.

    Parameters
    ----------
    model
        A trained :class:`~scmixvae.MixSCVI` (anything with an scvi-tools ``history``).
    keys
        History entries to plot; ELBO-like keys share the first panel, ``jsd_*`` the second.
        Missing keys are skipped.
    ax
        Two axes to draw into.
    show, save
        See the module docstring.
    """
    history = model.history
    bound_keys = [k for k in keys if not k.startswith("jsd") and k in history]
    jsd_keys = [k for k in keys if k.startswith("jsd") and k in history]
    if not bound_keys and not jsd_keys:
        raise ValueError(f"none of {list(keys)} is in model.history ({list(history)}).")
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(8, 3))
    for key in bound_keys:
        series = _history_series(history, key)
        ax[0].plot(series.index, -series.to_numpy(), label=key.replace("elbo", "MISELBO"))
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("bound per cell (higher is better)")
    ax[0].legend(fontsize=8)
    for key in jsd_keys:
        series = _history_series(history, key)
        ax[1].plot(series.index, series.to_numpy(), label=key)
    n_components = getattr(model, "n_components", None)
    if n_components and n_components > 1:
        ax[1].axhline(np.log(n_components), ls=":", c="grey", label="log S (no overlap)")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("JSD between components")
    ax[1].legend(fontsize=8)
    return _finish(ax, show, save)


def umap_mixture(
    adata: AnnData,
    key: str = "X_mixscvi",
    color: Sequence[str] = (),
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    **kwargs,
) -> Sequence[Axes]:
    """UMAP coloured by the dominant component and by per-cell posterior uncertainty.

    Needs ``adata.obsm['X_umap']`` (``sc.tl.umap``) and the outputs of
    :func:`scmixvae.tl.mixscvi`. Extra ``color`` keys (e.g. ``"leiden"``) get panels too;
    ``**kwargs`` go to :func:`scanpy.pl.umap`.
    """
    import scanpy as sc

    if "X_umap" not in adata.obsm:
        raise KeyError("adata.obsm['X_umap'] is missing; run sc.pp.neighbors and sc.tl.umap.")
    colors = [f"{key}_component", f"{key}_uncertainty", *color]
    missing = [c for c in colors if c not in adata.obs and c not in adata.var_names]
    if missing:
        raise KeyError(f"{missing} not in adata.obs; run scmixvae.tl.mixscvi first.")
    if ax is None:
        _, ax = plt.subplots(
            1, len(colors), figsize=(5.0 * len(colors), 4.0), layout="constrained"
        )
    for axis, c in zip(np.atleast_1d(ax), colors, strict=True):
        sc.pl.umap(adata, color=c, ax=axis, show=False, **kwargs)
    return _finish(ax, show, save)


def responsibility_heatmap(
    adata: AnnData,
    groupby: str,
    key: str = "X_mixscvi",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """Mean component responsibility per group (cell type, cluster): which component covers what.

    Rows are groups, columns components; rows sum to one.
    """
    resp_key = f"{key}_responsibilities"
    if resp_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{resp_key!r}] is missing; run scmixvae.tl.mixscvi first.")
    if groupby not in adata.obs:
        raise KeyError(f"{groupby!r} is not a column of adata.obs.")
    resp = np.asarray(adata.obsm[resp_key])
    table = pd.DataFrame(resp, index=adata.obs_names).groupby(adata.obs[groupby].to_numpy()).mean()
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.6 * resp.shape[1], 0.9 + 0.35 * len(table)))
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(resp.shape[1]), [str(k) for k in range(resp.shape[1])])
    ax.set_yticks(range(len(table)), [str(i) for i in table.index])
    ax.set_xlabel("component")
    ax.set_ylabel(groupby)
    ax.figure.colorbar(image, ax=ax, label="mean responsibility")
    return _finish(ax, show, save)


def nll_vs_components(
    results: str | os.PathLike | dict | Sequence[dict],
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """Test NLL against the number of components ``S``.

    Parameters
    ----------
    results
        A benchmark JSON written by ``benchmarks/images/nll_vs_s.py`` (path or loaded dict), or
        rows with keys ``S`` and ``test_nll_mixture`` (optionally ``test_nll_per_component``,
        ``negative_bound``).
    """
    if isinstance(results, str | os.PathLike):
        results = json.loads(Path(results).read_text())
    rows = results["rows"] if isinstance(results, dict) else list(results)
    if not rows or "S" not in rows[0]:
        raise ValueError("results must hold rows with an 'S' key.")
    rows = sorted(rows, key=lambda r: r["S"])
    s_values = [r["S"] for r in rows]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    labels = {
        "test_nll_mixture": ("o-", "IS, mixture proposal (tight)"),
        "test_nll_per_component": ("s--", "IS, per-component average"),
        "negative_bound": ("^:", "-MISELBO"),
    }
    for name, (style, label) in labels.items():
        if name in rows[0]:
            ax.plot(s_values, [r[name] for r in rows], style, label=label)
    ax.set_xticks(s_values)
    ax.set_xlabel("mixture components S")
    ax.set_ylabel("test NLL (nats)")
    ax.legend(fontsize=8)
    return _finish(ax, show, save)


def label_transfer(
    adata: AnnData,
    key: str = "label_transfer",
    basis: str = "umap",
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Sequence[Axes]:
    """What :func:`scmixvae.tl.label_transfer` wrote: a reliability diagram and the uncertainty.

    Left, accuracy against confidence of the reference's held-out validation cells (15 equal
    confidence bins; the diagonal is perfect calibration; dot size: cells in the bin). Right,
    the query's uncertainty on ``obsm[f"X_{basis}"]``, with the cells flagged unknown ringed.

    Parameters
    ----------
    adata
        The query after :func:`scmixvae.tl.label_transfer`.
    key
        Its ``key_added``.
    basis
        Embedding in ``adata.obsm`` to draw on (run ``sc.tl.umap`` first for ``"umap"``).
    ax, show, save
        Two axes to draw into; see the module docstring.
    """
    if key not in adata.uns or f"{key}_uncertainty" not in adata.obs:
        raise KeyError(f"no label transfer under {key!r}: run scmixvae.tl.label_transfer first.")
    if f"X_{basis}" not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no 'X_{basis}': compute it first (sc.pp.neighbors(adata, "
            f"use_rep='X_{key}'); sc.tl.umap(adata))."
        )
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(9, 4))
    table = pd.DataFrame(dict(adata.uns[key]["reliability"]))
    table = table[table["n"] > 0]
    ax[0].plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax[0].plot(table["confidence"], table["accuracy"], c="tab:blue")
    ax[0].scatter(
        table["confidence"], table["accuracy"], s=10 + 200 * table["n"] / table["n"].max()
    )
    ax[0].set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy")
    ax[0].set_title(f"held-out reference cells (n = {int(table['n'].sum())})", fontsize=9)
    xy = adata.obsm[f"X_{basis}"][:, :2]
    points = ax[1].scatter(xy[:, 0], xy[:, 1], c=adata.obs[f"{key}_uncertainty"], s=4,
                           cmap="viridis")  # fmt: skip
    unknown = adata.obs[f"{key}_unknown"].to_numpy(dtype=bool)
    ax[1].scatter(xy[unknown, 0], xy[unknown, 1], s=12, facecolors="none", edgecolors="red",
                  linewidths=0.4, label=f"unknown ({unknown.sum()})")  # fmt: skip
    ax[1].figure.colorbar(points, ax=ax[1], label="uncertainty (1 − confidence)")
    ax[1].set(xticks=[], yticks=[], xlabel=f"{basis}1", ylabel=f"{basis}2")
    ax[1].legend(fontsize=8, loc="best")
    return _finish(ax, show, save)
