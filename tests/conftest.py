"""Shared fixtures: seeding and the real-data directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("SCMIXVAE_OFFLINE", "1")  # tests never download


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (seeds code that uses the legacy global generator)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data directory: ``SCMIXVAE_DATA_DIR``, else ``../shared/data``; skips if absent."""
    candidates = [
        os.environ.get("SCMIXVAE_DATA_DIR"),
        Path(__file__).parents[1] / "../shared/data",
    ]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    pytest.skip("real data directory not found; set SCMIXVAE_DATA_DIR")
