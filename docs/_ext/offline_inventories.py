"""Intersphinx inventories built from the installed packages, so the docs build offline.

CI and the project's machines reach package registries only, so Sphinx cannot download
scvi-tools', scanpy's, anndata's and torch's ``objects.inv``. This extension writes one inventory
per project from the public names of the installed package, with each project's documented URL
layout (``api/reference/scvi.model.SCVI.html`` and so on), before intersphinx reads them. A link
is therefore only as right as that layout: check one per project when a project redesigns its
site. Where the network is available, ``SCMIXVAE_DOCS_ONLINE=1`` uses the published inventories.
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from pathlib import Path

# project -> (base URL, page of a public object, the namespaces whose public names are listed)
PROJECTS = {
    "scvi-tools": (
        "https://docs.scvi-tools.org/en/stable/",
        "api/reference/{name}.html",
        [
            "scvi.model",
            "scvi.module",
            "scvi.nn",
            "scvi.distributions",
            "scvi.train",
            "scvi.dataloaders",
            "scvi.data",
        ],
    ),
    "scanpy": (
        "https://scanpy.readthedocs.io/en/stable/",
        "generated/{name}.html",
        ["scanpy.pp", "scanpy.tl", "scanpy.pl"],
    ),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", "generated/{name}.html", ["anndata"]),
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        "generated/{name}.html",
        ["torch", "torch.nn", "torch.distributions"],
    ),
}


def _entries(namespaces: list[str], page: str) -> list[str]:
    lines = []
    for namespace in namespaces:
        module = importlib.import_module(namespace)
        for short in getattr(module, "__all__", None) or dir(module):
            if short.startswith("_"):
                continue
            obj = getattr(module, short, None)
            name = f"{namespace}.{short}"
            if inspect.isclass(obj):
                uri = page.format(name=name)
                lines.append(f"{name} py:class 1 {uri} -")
                for member, value in vars(obj).items():
                    if member.startswith("_"):
                        continue
                    role = "py:method" if callable(value) else "py:attribute"
                    lines.append(f"{name}.{member} {role} 1 {uri}#$ -")
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                lines.append(f"{name} py:function 1 {page.format(name=name)} -")
            elif inspect.ismodule(obj) and obj.__name__.startswith(namespace.split(".")[0]):
                lines.append(f"{name} py:module 1 {page.format(name=name)} -")
    return sorted(set(lines))


def write_inventories(directory: Path) -> dict[str, tuple[str, str]]:
    """Write ``<project>.inv`` files into ``directory``; the ``intersphinx_mapping`` for them."""
    directory.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (base, page, namespaces) in PROJECTS.items():
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n# Version: installed\n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        body = "\n".join(_entries(namespaces, page)) + "\n"
        path = directory / f"{project}.inv"
        path.write_bytes(header.encode() + zlib.compress(body.encode()))
        mapping[project] = (base, str(path))
    return mapping
