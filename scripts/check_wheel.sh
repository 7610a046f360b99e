#!/usr/bin/env bash
# Build the sdist and wheel, install the wheel into a fresh virtual environment, and check that
# the command line runs and every public module imports. CI runs it after the tests.
# Usage: bash scripts/check_wheel.sh [TORCH_SPEC]   (default torch==2.13.0, the CPU wheel here)
set -euo pipefail
cd "$(dirname "$0")/.."
torch_spec=${1:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip install -q build
python3 -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip > /dev/null
"$work/venv/bin/python" -m pip install -q "$torch_spec"
"$work/venv/bin/python" -m pip install -q "$work"/dist/scmixvae-*.whl
cd "$work"  # away from the source tree, so only the installed wheel can be imported
"$work/venv/bin/scmixvae" --help > /dev/null
"$work/venv/bin/python" - <<'PY'
import importlib
import pkgutil
from importlib.metadata import metadata

import scmixvae

names = [m.name for m in pkgutil.walk_packages(scmixvae.__path__, "scmixvae.")]
for name in names:
    importlib.import_module(name)
for public in ("MixSCVI", "MixSCANVI", "MixVAE", "MixSCANVAE", "tl", "pl", "datasets"):
    getattr(scmixvae, public)
meta = metadata("scmixvae")
assert meta["Version"] == scmixvae.__version__, (meta["Version"], scmixvae.__version__)
assert meta["License-Expression"] == "BSD-3-Clause", meta["License-Expression"]
assert set(meta.get_all("Provides-Extra")) >= {"test", "notebooks", "bench", "docs"}
print(f"scmixvae {scmixvae.__version__} wheel: {len(names)} modules import, CLI runs")
PY
