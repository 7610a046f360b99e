"""Where dataset files come from: the registry, the data directory, verified downloads.

A file is looked up, in order, in the ``data_dir`` argument, ``$SCMIXVAE_DATA_DIR``, ``./data``,
and the download cache; if it is in none of them it is downloaded from its canonical URL with
pooch and a sha256 check. Every local file is checked against the registry's sha256 too, so a
truncated or corrupted file is reported instead of silently read. Setting
``SCMIXVAE_OFFLINE=1`` forbids downloads (the test suite does).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "SCMIXVAE_DATA_DIR"
OFFLINE_ENV = "SCMIXVAE_OFFLINE"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is in no data directory and cannot be downloaded."""


class ChecksumError(OSError):
    """A dataset file does not have the sha256 the registry lists (corrupt or truncated)."""


@dataclass(frozen=True)
class RegisteredFile:
    """One file of a dataset: path relative to the data directory, checksum, source URL."""

    name: str
    sha256: str | None
    url: str | None
    alternative: RegisteredFile | None = None


@cache
def registry() -> dict[str, dict[str, Any]]:
    """The dataset registry: title, files (sha256, URL), licence and citation per dataset."""
    text = resources.files("scmixvae.datasets").joinpath("registry.json").read_text()
    return json.loads(text)


def dataset_files(dataset: str) -> list[RegisteredFile]:
    """The registered files of ``dataset``."""
    reg = registry()
    if dataset not in reg:
        raise KeyError(f"unknown dataset {dataset!r}; registered: {', '.join(sorted(reg))}.")
    files = []
    for name, entry in reg[dataset]["files"].items():
        alt = entry.get("alternative")
        files.append(
            RegisteredFile(
                name,
                entry.get("sha256"),
                entry.get("url"),
                RegisteredFile(alt["name"], alt.get("sha256"), alt.get("url")) if alt else None,
            )
        )
    return files


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for data files, in order."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs += [Path("data"), cache_dir()]
    return dirs


def cache_dir() -> Path:
    """Where downloads go (pooch's per-user cache for ``scmixvae``)."""
    import pooch

    return Path(pooch.os_cache("scmixvae"))


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def verify(path: Path, sha256: str | None) -> Path:
    """Raise :class:`ChecksumError` if ``path`` does not have checksum ``sha256``."""
    if sha256 is None:
        return path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) != sha256:
        actual = sha256_of(path)
        if actual != sha256:
            raise ChecksumError(
                f"{path} is corrupt or truncated: sha256 {actual} != registered {sha256}. "
                "Delete it and fetch it again."
            )
        _verified[key] = sha256
    return path


def fetch(
    registered: RegisteredFile,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    check: bool = True,
) -> Path:
    """Local path of a registered file, downloading it if it is nowhere on disk.

    Parameters
    ----------
    registered
        The file, from :func:`dataset_files`.
    data_dir
        Searched first.
    download
        Allow a download when the file is not found (also forbidden by ``SCMIXVAE_OFFLINE=1``).
    check
        Verify the sha256 of the file found.
    """
    options = [registered] + ([registered.alternative] if registered.alternative else [])
    searched = candidate_dirs(data_dir)
    for option in options:
        for directory in searched:
            path = directory / option.name
            if path.is_file():
                return verify(path, option.sha256) if check else path
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    downloadable = [o for o in options if o.url]
    if not download or offline or not downloadable:
        why = (
            "downloads are disabled"
            if (not download or offline)
            else "no URL serves these exact bytes"
        )
        raise DatasetNotFoundError(
            f"{registered.name} not found in {', '.join(str(d) for d in searched)} and {why}. "
            f"Put the file there or set {DATA_DIR_ENV}."
        )
    option = downloadable[0]
    if option.sha256 is None:
        raise DatasetNotFoundError(
            f"{option.name} has no registered sha256, so it is not downloaded unverified; "
            f"fetch {option.url} yourself into {DATA_DIR_ENV}."
        )
    import pooch

    target = cache_dir() / option.name
    pooch.retrieve(
        option.url,
        known_hash=f"sha256:{option.sha256}",
        fname=target.name,
        path=target.parent,
        progressbar=True,
    )
    return target
