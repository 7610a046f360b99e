"""Epoch time and memory against SCVI, and scaling with the number of cells."""

from .epoch_time import *  # noqa: F403  (the study's API: python -m benchmarks.cost)
