"""Timing the epochs of a Lightning training run, for the cost benchmarks."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class EpochTimer(pl.Callback):
    """Wall time of the training part of every epoch (validation excluded), in seconds."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)
