"""Execute the tutorials in full (not smoke) mode and store their outputs in place.

The documentation renders the notebooks from these stored outputs and never retrains, so run
this after changing a notebook (it needs ``SCMIXVAE_DATA_DIR``; minutes to an hour per notebook
on 2 CPU cores)::

    python scripts/execute_notebooks.py notebooks/03_label_transfer.ipynb

The file is replaced only once the whole notebook has run without an error.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int) -> float:
    """Run ``path`` top to bottom in full mode and write it back atomically; seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    os.environ["SCMIXVAE_NOTEBOOK_SMOKE"] = "0"
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": work}}).execute()  # fmt: skip
    seconds = time.perf_counter() - start
    notebook.metadata["scmixvae"] = {"executed": "full", "seconds": round(seconds)}
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb")
    os.close(handle)
    nbformat.write(notebook, tmp)
    os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp's file is private; keep the notebook's
    os.replace(tmp, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"{path}: {execute(path, args.timeout):.0f} s", flush=True)


if __name__ == "__main__":
    main()
