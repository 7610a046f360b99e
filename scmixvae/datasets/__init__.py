"""Real datasets: registry, verified local lookup / download, image and count loaders."""

from .images import (
    binarize_static,
    load_binarized_mnist,
    load_mnist_like,
    read_idx,
    to_unit_interval,
)
from .registry import (
    ChecksumError,
    DatasetNotFoundError,
    dataset_files,
    fetch,
    registry,
    sha256_of,
)
from .singlecell import COUNT_DATASETS, load_cortex, load_counts

__all__ = [
    "COUNT_DATASETS",
    "ChecksumError",
    "DatasetNotFoundError",
    "binarize_static",
    "dataset_files",
    "fetch",
    "load_binarized_mnist",
    "load_cortex",
    "load_counts",
    "load_mnist_like",
    "read_idx",
    "registry",
    "sha256_of",
    "to_unit_interval",
]
