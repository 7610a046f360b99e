"""Lightning callbacks that keep a training run safe and reproducible, for every model here."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the last good weights were restored."""


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/inf loss and restore the weights of the last good epoch."""

    def __init__(self, check_every_step: bool = True):
        super().__init__()
        # every step: the loss is read back at once, and the weights never go on from a NaN
        # (scvi-tools' distributions validate their arguments and would raise first); once per
        # epoch: no step waits for the device, and the epoch's remaining steps run in vain
        self.check_every_step = check_every_step
        self.good_state: dict[str, torch.Tensor] | None = None
        self.good_epoch: int = 0
        self.failure: tuple[int, int] | None = None
        self._finite: torch.Tensor | None = None  # all losses of this epoch finite so far

    def _snapshot(self, pl_module) -> None:
        # the whole Lightning module: scvi-tools' plan holds the model as .module, ours as .model
        self.good_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)
        self.good_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.failure is None:
            self._snapshot(pl_module)
            self.good_epoch = trainer.current_epoch + 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.failure is not None or loss is None:
            return
        # the flag stays on the device; reading it waits for the device, so it is read once
        # per epoch, at the last batch (before Lightning validates the epoch's weights) or
        # when the loop will stop anyway
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        n_batches = trainer.num_training_batches  # inf for a loader without a length
        last = not math.isfinite(n_batches) or batch_idx + 1 >= n_batches
        last = last or self.check_every_step
        if (last or trainer.should_stop) and not bool(self._finite):
            self.failure = (trainer.current_epoch + 1, trainer.global_step)
            trainer.should_stop = True
            # at once: Lightning still validates the epoch, which must not see broken weights
            pl_module.load_state_dict(self.good_state)
        if last:
            self._finite = None

    def raise_if_diverged(self) -> None:
        """Raise :class:`TrainingDivergedError` if training stopped on a non-finite loss."""
        if self.failure is None:
            return
        epoch, step = self.failure
        raise TrainingDivergedError(
            f"the training loss became NaN or infinite in epoch {epoch} (found at step {step}); "
            f"training stopped and the weights at the end of epoch {self.good_epoch} were "
            "restored. Lower the learning rate or check the input."
        )


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
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

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
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
