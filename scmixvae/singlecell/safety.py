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


def check_shared_encoder_layout(state_dict: dict, where: str | os.PathLike) -> None:
    """Refuse a model saved with the shared encoder's layout of scmixvae 0.1.0.

    That encoder had a coded head (``z_encoder.head.*``) after all of scVI's layers; the
    current one codes scVI's last layer (``z_encoder.coded_layer.*``), so its weights do not
    fit and scvi-tools would fail with a list of missing keys.
    """
    if any(key.startswith("z_encoder.head.") for key in state_dict):
        raise ValueError(
            f"the model saved in {where} uses the shared encoder's earlier layout (a coded head "
            "after scVI's encoder layers), which this version no longer loads by default; "
            "retrain it, or rebuild it with MixSCVI(..., shared_encoder=True, n_head_hidden=64) "
            "and copy its weights, renaming 'z_encoder.head.' to 'z_encoder.coded_layer.linear.'."
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
