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


class DeviceBatches:
    """Minibatches sliced from images held on the training device as one tensor.

    Each pass draws a permutation on the device and, for dynamic binarisation, the Bernoulli
    draws of every batch there too, so a training step does no host work for its data: no
    worker, no collation, no host-to-device copy. Both use the device's default generator,
    which the run's checkpoints save (:class:`~scmixvae.guards.RNGStateCheckpoint`).

    Parameters
    ----------
    images
        ``[N, 784]`` float32 images (intensities to binarise, or bits).
    batch_size
        Images per batch; the last batch of a pass holds the remainder.
    device
        Where the images live and the batches are made.
    binarize
        Draw ``x ~ Bernoulli(images)`` afresh for every batch.
    shuffle
        A new random order in every pass (training); ``False`` keeps the stored order.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        device: torch.device | str,
        binarize: bool = False,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.images = torch.as_tensor(images, dtype=torch.float32, device=device)
        self.batch_size = batch_size
        self.binarize = binarize
        self.shuffle = shuffle

    def __len__(self) -> int:
        return -(-self.images.shape[0] // self.batch_size)

    def __iter__(self):
        n = self.images.shape[0]
        order = torch.randperm(n, device=self.images.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                batch = self.images[start : start + self.batch_size]
            else:
                batch = self.images.index_select(0, order[start : start + self.batch_size])
            yield torch.bernoulli(batch) if self.binarize else batch


class ImageDataModule(pl.LightningDataModule):
    """Lightning data module over :class:`ImageSplits`; training batches are binarised here.

    With ``device_resident=True`` (the default) the images are put on the trainer's device
    once and batches are sliced there (:class:`DeviceBatches`); ``False`` uses a host
    ``DataLoader`` that binarises each collated batch on the host, as scmixvae 0.2 did (the
    same distribution of batches, drawn from another random stream).
    """

    def __init__(
        self,
        splits: ImageSplits,
        batch_size: int = 100,
        eval_batch_size: int = 500,
        device_resident: bool = True,
    ):
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device_resident = device_resident
        self._resident: dict[str, DeviceBatches] = {}

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _on_device(self, split: str, batch_size: int, binarize: bool, shuffle: bool):
        device = self._device()
        cached = self._resident.get(split)
        if cached is None or cached.images.device != device:  # copied once per device
            images = getattr(self.splits, split)
            cached = DeviceBatches(images, batch_size, device, binarize, shuffle)
            self._resident[split] = cached
        return cached

    def train_dataloader(self):
        if self.device_resident:
            return self._on_device("train", self.batch_size, self.splits.dynamic, True)
        return DataLoader(
            TensorDataset(torch.from_numpy(self.splits.train)),
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self._binarize if self.splits.dynamic else _stack,
        )

    def val_dataloader(self):
        if self.device_resident:
            return self._on_device("valid", self.eval_batch_size, False, False)
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
