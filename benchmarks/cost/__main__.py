"""``python -m benchmarks.cost``."""

from .epoch_time import main

main()
