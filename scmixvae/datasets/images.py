"""MNIST-family image readers and the binarisation protocols of the image benchmarks."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

from .registry import dataset_files, fetch

ImageDataset = Literal["mnist", "fashion_mnist"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST and FashionMNIST.

    Raises
    ------
    ValueError
        If the header is not an IDX header or the payload is truncated.
    """
    path = Path(path)
    with _open(path) as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    offset = 4 + 4 * n_dims
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or padded: {len(data) - offset} payload bytes, "
            f"header says {expected}."
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def load_mnist_like(
    dataset: ImageDataset = "mnist",
    split: Literal["train", "test"] = "train",
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of MNIST or FashionMNIST.

    Parameters
    ----------
    dataset
        ``"mnist"`` or ``"fashion_mnist"``.
    split
        ``"train"`` (60,000) or ``"test"`` (10,000).
    data_dir
        Directory holding ``<dataset>/*-ubyte.gz``; see :mod:`scmixvae.datasets.registry`.
    """
    if dataset not in ("mnist", "fashion_mnist"):
        raise ValueError(f"dataset must be 'mnist' or 'fashion_mnist', got {dataset!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    files = {Path(f.name).name: f for f in dataset_files(dataset)}
    images = read_idx(fetch(files[f"{prefix}-images-idx3-ubyte.gz"], data_dir))
    labels = read_idx(fetch(files[f"{prefix}-labels-idx1-ubyte.gz"], data_dir))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels."
        )
    return images, labels


def load_binarized_mnist(
    split: Literal["train", "valid", "test"] = "train",
    data_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Larochelle & Murray's statically binarised MNIST, ``[N, 784]`` float32 of 0/1."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}.")
    registered = next(f for f in dataset_files("binarized_mnist") if f"_{split}." in f.name)
    path = fetch(registered, data_dir)
    with _open(path) as fh:
        array = np.loadtxt(fh, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 784 or not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{path} is not 784-column binary .amat text.")
    return array


def to_unit_interval(images: np.ndarray) -> np.ndarray:
    """uint8 images ``[N, 28, 28]`` -> float32 ``[N, 784]`` in ``[0, 1]``."""
    return (images.reshape(images.shape[0], -1).astype(np.float32)) / 255.0


def binarize_static(intensities: np.ndarray, seed: int = 0) -> np.ndarray:
    """One fixed Bernoulli draw per pixel, reproducible from ``seed`` (validation / test sets)."""
    rng = np.random.default_rng(seed)
    return (rng.random(intensities.shape, dtype=np.float32) < intensities).astype(np.float32)
