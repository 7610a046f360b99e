"""A pytest plugin that runs scvi-tools' own model tests against scmixvae's classes.

``scvi.model.SCVI`` and ``scvi.model.SCANVI`` are replaced by ``MixSCVI`` and ``MixSCANVI``
before the tests import them, so every ``SCVI(...)``/``SCANVI.from_scvi_model(...)`` in
scvi-tools' test files builds a mixture model. Used by ``scripts/upstream_scanvi_tests.sh``.
"""

from __future__ import annotations

import scvi.model

from scmixvae import MixSCANVI, MixSCVI

scvi.model.SCVI = MixSCVI
scvi.model.SCANVI = MixSCANVI
