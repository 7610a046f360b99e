"""The compared single-cell models, named the same way by every benchmark script.

A model is written on the command line as ``scvi[:L<n>]`` or ``S<n>[:<option>...]`` with options
``ensemble`` / ``some_to_some`` (the objective), ``shared`` (amortized encoder), ``A<n>``
(components sampled per step), ``H<n>`` (the shared encoder's earlier layout, with a coded
head of ``n`` units; results up to commit cb8f48b used ``H64``), ``L<n>`` (``n_layers``
hidden layers in the encoder *and* the decoder, as scvi-tools' ``n_layers``) and ``D`` (trained
with the counts resident on the device, ``train(device_data=True)``), and the cookbook's other
recipes: ``vamp[<K>]`` / ``mog[<K>]`` (the latent prior, ``K`` components; 5, SysVI's, when no
``K`` is written, whatever the library's default) and
``F<n>`` (``n`` latent flow steps): ``S5``, ``S5:ensemble``, ``S50:shared:A1``,
``S50:shared:A1:H64``, ``scvi:L2``, ``S5:D``, ``S5:vamp``, ``S1:vamp50:F2``. ``sysvi`` is
scvi-tools' ``SysVI(prior="vamp")`` with its documented defaults (5 pseudo-inputs, its own
training plan and cycle-consistency weight), on log-normalised counts as it expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scmixvae.mixture import DEFAULT_OBJECTIVE

# the architecture of every benchmark (the method's paper: n_latent 10, n_hidden 128, ZINB)
ARCHITECTURE = {"n_latent": 10, "n_hidden": 128, "gene_likelihood": "zinb"}
# the row name of scvi-tools' SCVI with its defaults: every result is paired with it
REFERENCE = "SCVI"
# K of ``vamp`` / ``mog`` written without a number: SysVI's 5, the setting of every stored
# report, pinned here so that the library's default can move without changing their meaning
BENCHMARK_N_PRIOR_COMPONENTS = 5


@dataclass(frozen=True)
class ModelSpec:
    """SCVI, or MixSCVI with ``S`` components, an objective, an encoder kind and ``A``."""

    kind: str  # "scvi", "sysvi" or "mixscvi"
    n_components: int = 1
    objective: str = DEFAULT_OBJECTIVE
    shared_encoder: bool = False
    n_sampled_components: int | None = None
    n_head_hidden: int | None = None
    n_layers: int = 1
    device_data: bool = False
    prior: str = "standard_normal"
    n_prior_components: int | None = None
    flow_steps: int = 0

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
        if self.prior != "standard_normal":
            k = "" if self.n_prior_components is None else str(self.n_prior_components)
            if equals:
                parts.append(f"prior={self.prior}" + (f" K={k}" if k else ""))
            else:
                parts.append(f"{self.prior}{k}")
        if self.flow_steps:
            parts.append(f"flow={self.flow_steps}" if equals else f"F{self.flow_steps}")
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
            and self.prior == "standard_normal"  # image priors are chosen by architecture
            and self.flow_steps == 0
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
        if self.kind == "sysvi":
            return "SysVI(prior=vamp)"
        return f"MixSCVI({self.label})"

    @property
    def code(self) -> str:
        """The command-line spelling (inverse of :meth:`parse`)."""
        if self.kind == "scvi":
            return "scvi" if self.is_reference else f"scvi:L{self.n_layers}"
        if self.kind == "sysvi":
            return "sysvi"
        return ":".join(self._settings(""))

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``scvi``, ``scvi:L2``, ``S5``, ``S5:ensemble``, ``S50:shared:A1``, ..."""
        head, *options = text.split(":")
        if head.lower() == "sysvi":
            if options:
                raise ValueError(f"model {text!r}: SysVI takes no options.")
            return cls("sysvi", prior="vamp")
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
            elif match := re.fullmatch(r"(vamp|mog)(\d*)", option):
                fields["prior"] = match.group(1)
                if match.group(2):
                    fields["n_prior_components"] = int(match.group(2))
            elif re.fullmatch(r"F[1-9]\d*", option):
                fields["flow_steps"] = int(option[1:])
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

    def build(self, adata, layer: str | None = None, pseudo_input_cells=None, **setup):
        """Register ``adata`` and return the untrained model with the benchmark architecture.

        ``pseudo_input_cells``: cells a VampPrior's pseudo-inputs may start from (the training
        cells, so that no held-out cell enters the model); ``K`` of them are drawn with the
        seed of scvi-tools' settings.
        """
        import scvi

        from scmixvae import MixSCVI

        if self.kind == "sysvi":
            return _sysvi(adata, layer, **setup)
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
            **self.recipe_kwargs,
            **self._pseudo_input_kwargs(pseudo_input_cells),
            **ARCHITECTURE,
        )

    def _pseudo_input_kwargs(self, cells) -> dict:
        if self.prior != "vamp" or cells is None:
            return {}
        import numpy as np
        import torch

        k = self.recipe_kwargs["n_prior_components"]
        rng = np.random.default_rng(torch.initial_seed())
        chosen = np.sort(rng.choice(np.asarray(cells), size=k, replace=False))
        return {"pseudoinputs_data_indices": chosen}

    @property
    def recipe_kwargs(self) -> dict:
        """The prior and flow arguments of MixSCVI (none for the default recipe)."""
        out: dict = {}
        if self.prior != "standard_normal":
            out["prior"] = self.prior
            out["n_prior_components"] = self.n_prior_components or BENCHMARK_N_PRIOR_COMPONENTS
        if self.flow_steps:
            out["flow_steps"] = self.flow_steps
        return out


def _sysvi(adata, layer: str | None, batch_key: str | None = None, **setup):
    """scvi-tools' SysVI with its defaults (VampPrior, 5 pseudo-inputs) and the benchmark's
    latent size, on log-normalised counts (its Gaussian likelihood expects them); without a
    batch column every cell is one system."""
    import scanpy as sc
    from scvi.external import SysVI

    counts = adata.layers[layer] if layer else adata.X
    normalised = sc.AnnData(counts.copy(), obs=adata.obs.copy(), var=adata.var.copy())
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    adata.layers["sysvi_log_normalised"] = normalised.X
    if batch_key is None:
        batch_key = "sysvi_system"
        adata.obs[batch_key] = "all"
    SysVI.setup_anndata(adata, batch_key=batch_key, layer="sysvi_log_normalised", **setup)
    return SysVI(adata, prior="vamp", n_latent=ARCHITECTURE["n_latent"])
