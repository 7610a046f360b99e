"""scmixvae: mixture variational posteriors trained with MISELBO.

Single-cell counts through :class:`scmixvae.MixSCVI` (an scvi-tools model), images through
:mod:`scmixvae.image`; both use the same mixture machinery in :mod:`scmixvae.mixture`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.3.0"

# heavy imports (scvi-tools, scanpy) happen on first use, so `import scmixvae.mixture` stays light
_LAZY = {
    "MixSCVI": ("scmixvae.singlecell.model", "MixSCVI"),
    "MixVAE": ("scmixvae.singlecell.module", "MixVAE"),
    "MixSCANVI": ("scmixvae.singlecell.scanvi_model", "MixSCANVI"),
    "MixSCANVAE": ("scmixvae.singlecell.scanvi_module", "MixSCANVAE"),
    "tl": ("scmixvae.tl", None),
    "pl": ("scmixvae.pl", None),
    "datasets": ("scmixvae.datasets", None),
    "mixture": ("scmixvae.mixture", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'scmixvae' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = import_module(module_name)
    return module if attr is None else getattr(module, attr)
