"""``python -m benchmarks.integration``."""

from .protocol import main

main()
