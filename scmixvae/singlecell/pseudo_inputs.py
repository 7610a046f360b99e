"""Where a count model's VampPrior pseudo-inputs start: real cells, in the encoder's input space.

As scvi-tools' SysVI, the ``K`` pseudo-inputs start as ``K`` cells of the training data (chosen
by ``pseudoinputs_data_indices``, or drawn at random) and keep those cells' batch and categorical
covariates, fixed. They live where the encoder reads: ``log1p`` of the counts (the encoder's own
transform) with any encoded continuous covariates appended.

A model that is being restored (``load``, ``load_query_data``) gets placeholders instead: its
saved state holds the learned pseudo-inputs, and the AnnData it is given (a query, a minified
AnnData) need not hold the reference's cells.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scvi import REGISTRY_KEYS

_RESTORING = contextvars.ContextVar("scmixvae_restoring_weights", default=False)


@contextlib.contextmanager
def restoring_weights() -> Iterator[None]:
    """Within it, models are being rebuilt to receive saved weights (placeholders suffice)."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def choose_cells(n_obs: int, n_prior_components: int, indices: Sequence[int] | None) -> np.ndarray:
    """The cells the pseudo-inputs start from, with one-line errors for impossible requests."""
    if indices is not None:
        chosen = np.asarray(indices)
        if chosen.ndim != 1 or chosen.size == 0 or not np.issubdtype(chosen.dtype, np.integer):
            raise ValueError(
                "pseudoinputs_data_indices must be a non-empty 1-d sequence of integer cell "
                f"indices, got {indices!r}."
            )
        if chosen.min() < 0 or chosen.max() >= n_obs:
            raise ValueError(
                f"pseudoinputs_data_indices must lie in [0, {n_obs}) (the registered cells), got "
                f"values from {chosen.min()} to {chosen.max()}."
            )
        if n_prior_components != chosen.size:
            raise ValueError(
                f"n_prior_components={n_prior_components} but {chosen.size} "
                "pseudoinputs_data_indices were given: give one, or make them agree."
            )
        return chosen
    if n_prior_components > n_obs:
        raise ValueError(
            f"n_prior_components={n_prior_components} exceeds the {n_obs} registered cells the "
            "pseudo-inputs start from; use at most that many."
        )
    # a generator of its own, seeded from torch's seed (scvi.settings.seed sets it): the same
    # cells for the same seed, and no draw taken from the global streams
    rng = np.random.default_rng(torch.initial_seed())
    return np.sort(rng.choice(n_obs, size=n_prior_components, replace=False))


def pseudo_inputs_from_cells(
    adata_manager, cells: np.ndarray, module_kwargs: dict
) -> dict[str, torch.Tensor]:
    """The module's ``pseudo_inputs``, ``pseudo_input_batch`` and ``pseudo_input_cat_covs``."""
    counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)[cells]
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    u = torch.as_tensor(np.asarray(counts, dtype=np.float32))
    if module_kwargs.get("log_variational", True):
        u = torch.log1p(u)
    registered = adata_manager.data_registry
    if module_kwargs.get("encode_covariates", False) and REGISTRY_KEYS.CONT_COVS_KEY in registered:
        cont = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY))[cells]
        u = torch.cat([u, torch.as_tensor(cont, dtype=torch.float32)], dim=1)
    batch = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY))[cells]
    out = {
        "pseudo_inputs": u,
        "pseudo_input_batch": torch.as_tensor(batch, dtype=torch.float32).reshape(-1, 1),
    }
    if REGISTRY_KEYS.CAT_COVS_KEY in registered:
        cat = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.CAT_COVS_KEY))[cells]
        out["pseudo_input_cat_covs"] = torch.as_tensor(cat, dtype=torch.float32)
    return out


def placeholder_pseudo_inputs(adata_manager, k: int) -> dict:
    """Shapes only, for a saved state to fill: ``K`` and zero categorical covariates."""
    out: dict = {"n_prior_components": k}
    if REGISTRY_KEYS.CAT_COVS_KEY in adata_manager.data_registry:
        n_cat = len(adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).field_keys)
        out["pseudo_input_cat_covs"] = torch.zeros(k, n_cat)
    return out


def is_restoring() -> bool:
    """Whether a saved model is being rebuilt (see :func:`restoring_weights`)."""
    return _RESTORING.get()
