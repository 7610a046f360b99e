"""The compared single-cell models, named the same way by every benchmark script.

A model is written on the command line as ``scvi[:L<n>]`` or ``S<n>[:<option>...]`` with options
``ensemble`` / ``some_to_some`` (the objective), ``shared`` (amortized encoder), ``A<n>``
(components sampled per step), ``H<n>`` (the shared encoder's earlier layout, with a coded
head of ``n`` units; results up to commit cb8f48b used ``H64``), ``L<n>`` (``n_layers``
hidden layers in the encoder *and* the decoder, as scvi-tools' ``n_layers``) and ``D`` (trained
with the counts resident on the device, ``train(device_data=True)``): ``S5``,
``S5:ensemble``, ``S50:shared:A1``, ``S50:shared:A1:H64``, ``scvi:L2``, ``S5:D``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scmixvae.mixture import DEFAULT_OBJECTIVE

# the architecture of every benchmark (the method's paper: n_latent 10, n_hidden 128, ZINB)
ARCHITECTURE = {"n_latent": 10, "n_hidden": 128, "gene_likelihood": "zinb"}
# the row name of scvi-tools' SCVI with its defaults: every result is paired with it
REFERENCE = "SCVI"


@dataclass(frozen=True)
class ModelSpec:
    """SCVI, or MixSCVI with ``S`` components, an objective, an encoder kind and ``A``."""

    kind: str  # "scvi" or "mixscvi"
    n_components: int = 1
    objective: str = DEFAULT_OBJECTIVE
    shared_encoder: bool = False
    n_sampled_components: int | None = None
    n_head_hidden: int | None = None
    n_layers: int = 1
    device_data: bool = False

    def _settings(self, equals: str) -> list[str]:
        parts = [f"S{equals}{self.n_components}"]
        if self.objective != DEFAULT_OBJECTIVE:
            parts.append(self.objective)
        if self.shared_encoder:
            parts.append("shared")
        if self.n_sampled_components is not None:
            parts.append(f"A{equals}{self.n_sampled_components}")
        if self.n_head_hidden is not None:
            head = self.n_head_hidden
            parts.append(f"head={head}" if equals else f"H{head}")
        if self.n_layers != 1:
            parts.append(f"n_layers={self.n_layers}" if equals else f"L{self.n_layers}")
        if self.device_data:
            parts.append("device data" if equals else "D")
        return parts

    @property
    def label(self) -> str:
        """The mixture's settings, e.g. ``S=50, shared, A=1``."""
        return ", ".join(self._settings("="))

    @property
    def is_reference(self) -> bool:
        """Whether this is scvi-tools' SCVI with its defaults (every row is paired to it)."""
        return self.kind == "scvi" and self.n_layers == 1

    @property
    def has_image_form(self) -> bool:
        """False for SCVI and the single-cell-only options ``H<n>`` and ``L<n>``."""
        return (
            self.kind == "mixscvi"
            and self.n_head_hidden is None
            and self.n_layers == 1
            and not self.device_data  # image training data are always on the device
        )

    @property
    def train_kwargs(self) -> dict:
        """Arguments this configuration adds to ``model.train``."""
        return {"device_data": True} if self.device_data else {}

    @property
    def name(self) -> str:
        """Row label, e.g. ``MixSCVI(S=50, shared, A=1)``; earlier results used the same."""
        if self.kind == "scvi":
            return REFERENCE if self.is_reference else f"SCVI(n_layers={self.n_layers})"
        return f"MixSCVI({self.label})"

    @property
    def code(self) -> str:
        """The command-line spelling (inverse of :meth:`parse`)."""
        if self.kind == "scvi":
            return "scvi" if self.is_reference else f"scvi:L{self.n_layers}"
        return ":".join(self._settings(""))

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``scvi``, ``scvi:L2``, ``S5``, ``S5:ensemble``, ``S50:shared:A1``, ..."""
        head, *options = text.split(":")
        if head.lower() == "scvi":
            if len(options) > 1 or not all(re.fullmatch(r"L[1-9]\d*", o) for o in options):
                raise ValueError(f"model {text!r}: SCVI takes only the option L<n> (n_layers).")
            return cls("scvi", n_layers=int(options[-1][1:]) if options else 1)
        match = re.fullmatch(r"S(\d+)", head)
        if match is None:
            raise ValueError(f"model {text!r}: expected 'scvi[:L<n>]' or 'S<n>[:options]'.")
        fields = {"n_components": int(match.group(1))}
        for option in options:
            if option in ("ensemble", "some_to_some", "miselbo"):
                fields["objective"] = option
            elif option == "shared":
                fields["shared_encoder"] = True
            elif re.fullmatch(r"A\d+", option):
                fields["n_sampled_components"] = int(option[1:])
            elif re.fullmatch(r"H\d+", option):
                fields["n_head_hidden"] = int(option[1:])
            elif re.fullmatch(r"L[1-9]\d*", option):
                fields["n_layers"] = int(option[1:])
            elif option == "D":
                fields["device_data"] = True
            else:
                raise ValueError(f"model {text!r}: unknown option {option!r}.")
        if "n_head_hidden" in fields and not fields.get("shared_encoder"):
            raise ValueError(f"model {text!r}: H<n> sets the shared encoder's head; add 'shared'.")
        return cls("mixscvi", **fields)

    def image_config(self, **training):
        """The image run of this configuration: ``ImageTrainConfig`` with the mixture's fields
        from the spec and ``training`` (architecture, dataset, epochs, seed, ...) for the rest."""
        from scmixvae.image.training import ImageTrainConfig

        if not self.has_image_form:
            raise ValueError(f"{self.code} is single-cell only (scvi, H<n> and L<n>)")
        return ImageTrainConfig(
            n_components=self.n_components,
            objective=self.objective,
            shared_encoder=self.shared_encoder,
            n_sampled_components=self.n_sampled_components,
            **training,
        )

    def build(self, adata, layer: str | None = None, **setup):
        """Register ``adata`` and return the untrained model with the benchmark architecture."""
        import scvi

        from scmixvae import MixSCVI

        cls = scvi.model.SCVI if self.kind == "scvi" else MixSCVI
        cls.setup_anndata(adata, layer=layer, **setup)
        if self.kind == "scvi":
            return cls(adata, n_layers=self.n_layers, **ARCHITECTURE)
        return cls(
            adata,
            n_components=self.n_components,
            objective=self.objective,
            shared_encoder=self.shared_encoder,
            n_sampled_components=self.n_sampled_components,
            **({} if self.n_head_hidden is None else {"n_head_hidden": self.n_head_hidden}),
            n_layers=self.n_layers,
            **ARCHITECTURE,
        )
