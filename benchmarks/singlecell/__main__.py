"""``python -m benchmarks.singlecell``."""

from .protocol import main

main()
