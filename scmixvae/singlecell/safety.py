"""Guards that keep a user's model and files intact: gene checks, atomic saves, NaN recovery."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback


class GeneMismatchError(ValueError):
    """The AnnData's genes are not the ones (in the order) the model was trained on."""


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the last good weights were restored."""


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


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/inf loss and restore the weights of the last good epoch."""

    def __init__(self):
        super().__init__()
        self.good_state: dict[str, torch.Tensor] | None = None
        self.good_epoch: int = 0
        self.failure: tuple[int, int] | None = None

    def _snapshot(self, pl_module) -> None:
        self.good_state = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)
        self.good_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.failure is None:
            self._snapshot(pl_module)
            self.good_epoch = trainer.current_epoch + 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.failure is None and loss is not None and not torch.isfinite(loss).all():
            self.failure = (trainer.current_epoch + 1, trainer.global_step)
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.failure is not None and self.good_state is not None:
            pl_module.module.load_state_dict(self.good_state)


class RNGStateCheckpoint(Callback):
    """Save the random-number generators in checkpoints and restore them on resume.

    Lightning restores weights, optimiser and epoch but not the generators that shuffle
    minibatches and drive dropout and sampling; with them a resumed run continues exactly as
    the uninterrupted one would.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # plain types and tensors only: Lightning loads checkpoints with weights_only=True
        name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        name, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state(  # noqa: NPY002
            (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
        )
        random.setstate(states["python"])
