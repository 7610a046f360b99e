"""The converged single-cell protocol (held-out likelihood, clustering) and its controls."""

from .protocol import *  # noqa: F403  (the study's API: python -m benchmarks.singlecell)
