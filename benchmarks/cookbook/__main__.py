"""``python -m benchmarks.cookbook``."""

from .summary import main

main()
