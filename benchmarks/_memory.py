"""Resident memory of the current process (Linux), for the benchmarks that measure it."""

from __future__ import annotations

import resource
from pathlib import Path


def lifetime_peak_rss_gb() -> float:
    """Highest resident set of this process since it started."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def status_gb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``"VmRSS"``, ``"VmHWM"``) in GB, if present."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024**2
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (``VmHWM``) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
