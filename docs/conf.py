"""Sphinx configuration: scverse conventions (book theme, myst-nb, autosummary, intersphinx).

The tutorials are the repository's notebooks, rendered from their stored outputs (nothing is
executed here), and the benchmark reports are the committed files of ``benchmarks/results``;
both are copied into ``_generated/`` at build time so that there is one copy in the repository.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

from offline_inventories import write_inventories  # noqa: E402

import scmixvae  # noqa: E402

GENERATED = HERE / "_generated"


def _copy_sources() -> None:
    """Notebooks and benchmark reports into the source tree, replacing earlier copies."""
    shutil.rmtree(GENERATED, ignore_errors=True)
    (GENERATED / "tutorials").mkdir(parents=True)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, GENERATED / "tutorials" / notebook.name)
    skip = shutil.ignore_patterns(".progress", "*.json", "*.npz", "*.csv")
    shutil.copytree(ROOT / "benchmarks" / "results", GENERATED / "results", ignore=skip)


_copy_sources()

project = "scmixvae"
author = "scmixvae developers"
copyright = "2026, scmixvae developers"
release = version = scmixvae.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_design",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
# autosummary writes its stubs with the first suffix: they are reStructuredText
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# notebooks: stored outputs only (scripts/execute_notebooks.py writes them)
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# the committed benchmark reports start at any heading level and were written for GitHub
suppress_warnings = ["myst.header", "myst.xref_missing"]

autosummary_generate = True
autodoc_member_order = "groupwise"
# scvi-tools' docstrings cite with sphinxcontrib-bibtex roles: only our own docstrings are shown
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Written", "returns_style")]

if os.environ.get("SCMIXVAE_DOCS_ONLINE") == "1":
    intersphinx_mapping = {
        "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
    }
else:
    intersphinx_mapping = write_inventories(GENERATED / "inventories")

html_theme = "sphinx_book_theme"
html_title = f"scmixvae {version}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
}
html_static_path: list[str] = []
