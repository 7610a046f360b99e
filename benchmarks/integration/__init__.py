"""Batch integration with scib-metrics: MixSCVI against SCVI, SysVI and Harmony."""

from .protocol import *  # noqa: F403  (the study's API: python -m benchmarks.integration)
