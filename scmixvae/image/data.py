"""The image benchmarks' data protocol: splits and binarisation.

Training on the first 50,000 training images, binarised afresh in every batch; validation on
the last 10,000 and test on the 10,000 test images, each binarised once with a fixed seed.
Larochelle's statically binarised MNIST (``binarized_mnist``) is used as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from scmixvae.datasets import (
    binarize_static,
    load_binarized_mnist,
    load_mnist_like,
    to_unit_interval,
)

ImageDatasetName = Literal["mnist", "fashion_mnist", "binarized_mnist"]
DATASETS = ("mnist", "fashion_mnist", "binarized_mnist")
N_TRAIN = 50_000


@dataclass
class ImageSplits:
    """Float32 arrays ``[N, 784]``: training intensities (or bits) and fixed binary val/test."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    dynamic: bool  # binarise the training set afresh in every batch


def load_splits(
    dataset: ImageDatasetName = "mnist",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    subset: int | None = None,
) -> ImageSplits:
    """Train / validation / test arrays of a dataset under the benchmark protocol.

    Parameters
    ----------
    dataset
        ``mnist``, ``fashion_mnist`` (dynamic binarisation) or ``binarized_mnist`` (static).
    data_dir
        Data directory (see :mod:`scmixvae.datasets.registry`).
    seed
        Seed of the static binarisation of the validation and test sets.
    subset
        Keep only the first ``subset`` images of each split (quick runs and tests).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    if dataset == "binarized_mnist":
        splits = ImageSplits(
            load_binarized_mnist("train", data_dir),
            load_binarized_mnist("valid", data_dir),
            load_binarized_mnist("test", data_dir),
            dynamic=False,
        )
    else:
        train_images, _ = load_mnist_like(dataset, "train", data_dir)
        test_images, _ = load_mnist_like(dataset, "test", data_dir)
        intensities = to_unit_interval(train_images)
        splits = ImageSplits(
            train=intensities[:N_TRAIN],
            valid=binarize_static(intensities[N_TRAIN:], seed=seed),
            test=binarize_static(to_unit_interval(test_images), seed=seed + 1),
            dynamic=True,
        )
    if subset is not None:
        splits.train, splits.valid, splits.test = (
            splits.train[:subset],
            splits.valid[:subset],
            splits.test[:subset],
        )
    return splits


class ImageDataModule(pl.LightningDataModule):
    """Lightning data module over :class:`ImageSplits`; training batches are binarised here."""

    def __init__(self, splits: ImageSplits, batch_size: int = 100, eval_batch_size: int = 500):
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TensorDataset(torch.from_numpy(self.splits.train)),
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self._binarize if self.splits.dynamic else _stack,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            TensorDataset(torch.from_numpy(self.splits.valid)),
            batch_size=self.eval_batch_size,
            collate_fn=_stack,
        )

    @staticmethod
    def _binarize(items: list[tuple[torch.Tensor]]) -> torch.Tensor:
        return torch.bernoulli(_stack(items))


def _stack(items: list[tuple[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([item[0] for item in items])
