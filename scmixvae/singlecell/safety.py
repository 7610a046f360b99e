"""Guards that keep a user's model and files intact: gene checks and atomic saves.

The training guards (NaN recovery, random-number state in checkpoints) are in
:mod:`scmixvae.guards`, shared with the image models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


class GeneMismatchError(ValueError):
    """The AnnData's genes are not the ones (in the order) the model was trained on."""


def check_same_genes(expected: Sequence[str], given: Sequence[str], what: str) -> None:
    """Raise :class:`GeneMismatchError` unless ``given`` equals ``expected`` element-wise."""
    expected = pd.Index(expected)
    given = pd.Index(given)
    if len(expected) == len(given) and (expected == given).all():
        return
    missing = expected.difference(given)
    extra = given.difference(expected)
    if len(missing) == 0 and len(extra) == 0:
        first = int(np.flatnonzero(expected != given)[0])
        detail = (
            f"the same {len(given)} genes in a different order (first difference at position "
            f"{first}: {given[first]!r} instead of {expected[first]!r}); reorder with "
            "adata[:, model_genes]"
        )
    else:
        detail = (
            f"{len(given)} genes given, {len(expected)} expected; {len(missing)} missing "
            f"(e.g. {list(missing[:3])}), {len(extra)} unexpected (e.g. {list(extra[:3])})"
        )
    raise GeneMismatchError(f"the genes of this AnnData do not match {what}: {detail}.")


def _sets_head_width(init_params: dict) -> bool:
    kwargs = init_params.get("kwargs", {})
    return any("n_head_hidden" in group for group in kwargs.values() if isinstance(group, dict))


def check_shared_encoder_layout(saved: dict, where: str | os.PathLike) -> None:
    """Refuse, with the way out, a model saved with scmixvae 0.1.0's shared encoder.

    That encoder had a coded head (``z_encoder.head.*``) after scVI's layers without a
    ``n_head_hidden`` to say so; this version builds that layout only when ``n_head_hidden``
    is given, so scvi-tools would fail with a list of missing keys.
    """
    state = saved.get("model_state_dict", {})
    if not any(key.startswith("z_encoder.head.") for key in state):
        return
    if _sets_head_width(saved.get("attr_dict", {}).get("init_params_", {})):
        return
    raise ValueError(
        f"the model saved in {where} has the shared encoder of scmixvae 0.1.0 (a 64-unit coded "
        "head after scVI's layers), which this version builds only when asked: create "
        "MixSCVI(adata, <its settings>, shared_encoder=True, n_head_hidden=64) and load "
        "its weights: state = torch.load(path, weights_only=False)['model_state_dict']; "
        "state.pop('pyro_param_store', None); model.module.load_state_dict(state)."
    )


def init_param(init_params: dict, name: str, default=None):
    """A saved model's constructor argument, wherever scvi-tools filed it."""
    if name in init_params.get("non_kwargs", {}):
        return init_params["non_kwargs"][name]
    for group in init_params.get("kwargs", {}).values():
        if isinstance(group, dict) and name in group:
            return group[name]
    return default


def check_prior_state(saved: dict, where: str | os.PathLike) -> None:
    """Refuse, in one line, a VampPrior model whose saved weights lack its pseudo-inputs."""
    init_params = saved.get("attr_dict", {}).get("init_params_", {})
    if init_param(init_params, "prior", "standard_normal") != "vamp":
        return
    if "prior.pseudo_inputs" not in saved.get("model_state_dict", {}):
        raise ValueError(
            f"the model saved in {where} has prior='vamp' but its weights hold no "
            "'prior.pseudo_inputs': it cannot be restored (save it again from the trained model)."
        )


def atomic_save_dir(save_fn, dir_path: str | os.PathLike, overwrite: bool) -> None:
    """Run ``save_fn(tmp_dir)`` then move each file it wrote into ``dir_path`` atomically.

    Files are replaced one by one with :func:`os.replace` (the model file last), so a process
    killed at any moment leaves every file in ``dir_path`` either the old or the new version,
    never a partial one.
    """
    target = Path(dir_path)
    if target.exists() and not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving.", dir=target.parent))
    try:
        save_fn(str(staging))
        target.mkdir(exist_ok=True)
        files = sorted(staging.iterdir(), key=lambda f: f.name.endswith("model.pt"))
        for file in files:
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(file, target / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
