"""Writing a benchmark's results: JSON for machines, markdown for people, both atomically."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

from scmixvae.io import atomic_path


def write_report(stem: Path, payload: Any, lines: list[str]) -> None:
    """Write ``stem.json`` (``payload``) and ``stem.md`` (``lines``), creating the folder."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def machine_description() -> str:
    """The device torch computes on here: the GPU's name, or the CPU and its torch threads."""
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} GPU, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )


def command_line(module: str, argv: list[str] | None) -> str:
    """The shell command that ran ``module`` with ``argv`` (``None``: this process's arguments)."""
    return f"python -m {module} {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()


class LoadMonitor:
    """The highest 1-minute load average of the machine while a block runs, sampled every
    ``every`` seconds from a background thread.

    A timing taken while the load stayed near the job's own thread count ran alone; a higher
    peak means other work shared the cores and the time is not a clean one.
    """

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.peak = 0.0

    def _sample(self) -> None:
        self.peak = max(self.peak, os.getloadavg()[0])

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> LoadMonitor:
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
