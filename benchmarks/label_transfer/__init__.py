"""Label transfer and calibration: MixSCANVI against SCANVI and kNN votes."""

from .protocol import *  # noqa: F403  (the study's API: python -m benchmarks.label_transfer)
