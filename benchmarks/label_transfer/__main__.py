"""``python -m benchmarks.label_transfer``."""

from .protocol import main

main()
