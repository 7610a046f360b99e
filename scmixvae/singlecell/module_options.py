"""The mixture module's limits, option checks and small tensor helpers (used by MixVAE)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scmixvae.mixture import MixtureNormal, validate_objective

# separate encoders cost S networks per step; the shared trunk costs one
MAX_SEPARATE_COMPONENTS = 128
MAX_SHARED_COMPONENTS = 1024
# decoder passes per cell per training step (n_particles x drawn components): beyond this a
# step's decoded likelihoods (draws x batch x genes) stop fitting in memory at usual sizes
MAX_DECODED_DRAWS = 128
# bound on decoded values (draws x cells x genes) per importance-sampling pass: ~10 float32
# tensors of this size are alive at once, so 2e7 keeps a pass under 1 GB
MAX_ELEMENTS_PER_PASS = 20_000_000


def validate_mixture_options(
    n_components: int,
    objective: str,
    shared_encoder: bool,
    n_sampled_components: int | None,
    n_particles: int,
    gene_likelihood: str | None = None,
) -> None:
    """Raise a clear error for options MixVAE cannot run with (before anything is built)."""
    validate_objective(objective)
    if gene_likelihood == "normal":
        raise ValueError(
            "gene_likelihood='normal' is not supported: MixSCVI's bounds and likelihoods are "
            "for counts; use 'zinb', 'nb' or 'poisson' on raw counts."
        )
    if not isinstance(n_components, int | np.integer) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}.")
    cap = MAX_SHARED_COMPONENTS if shared_encoder else MAX_SEPARATE_COMPONENTS
    if n_components > cap:
        hint = "" if shared_encoder else " Use shared_encoder=True for larger mixtures."
        raise ValueError(
            f"n_components={n_components} is beyond the supported {cap} for "
            f"{'a shared' if shared_encoder else 'separate'} encoder(s).{hint}"
        )
    if n_sampled_components is not None and (
        not isinstance(n_sampled_components, int | np.integer)
        or not 1 <= n_sampled_components <= n_components
    ):
        raise ValueError(
            f"n_sampled_components must be None (all) or an integer in [1, {n_components}], "
            f"got {n_sampled_components!r}."
        )
    if n_particles < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}.")
    decoded = n_particles * (n_sampled_components or n_components)
    if decoded > MAX_DECODED_DRAWS:
        raise ValueError(
            f"each training step would decode {decoded} draws per cell (n_particles x "
            f"{'n_sampled_components' if n_sampled_components else 'n_components'}), beyond "
            f"the supported {MAX_DECODED_DRAWS}: set n_sampled_components (e.g. 1 to 5) to "
            "draw from a few components per step."
        )


def mixture_from_flat(loc: torch.Tensor, var: torch.Tensor, n_components: int) -> MixtureNormal:
    """The mixture from component-major flat parameters ``[B, S * D]`` (means, variances)."""
    n_obs, width = loc.shape
    if width % n_components:
        raise ValueError(
            f"stored posterior has {width} columns, not a multiple of n_components="
            f"{n_components}: it was not written by this model's minify_adata."
        )
    shape = (n_obs, n_components, width // n_components)
    return MixtureNormal(cell_loc=loc.reshape(shape), cell_scale=var.reshape(shape).sqrt())


def _cell_chunks(tensors: dict[str, torch.Tensor], n_chunk: int) -> Iterator[dict]:
    """The minibatch in consecutive pieces of at most ``n_chunk`` cells."""
    n_cells = tensors[REGISTRY_KEYS.X_KEY].shape[0]
    for start in range(0, n_cells, n_chunk):
        yield {
            k: v[start : start + n_chunk] if isinstance(v, torch.Tensor) and v.dim() else v
            for k, v in tensors.items()
        }
