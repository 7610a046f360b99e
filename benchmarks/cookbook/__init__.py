"""Which cookbook recipe pays for counts: the recipe table over the single-cell protocol."""

from .summary import *  # noqa: F403  (the study's API: python -m benchmarks.cookbook)
