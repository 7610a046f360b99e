"""The encoder of MixVAE's ``S`` components: separate (stacked) or amortized (shared trunk).

:func:`build_mixture_encoder` builds either from the same explicit options scVI's
:class:`scvi.nn.Encoder` takes, so every option a user sets reaches the mixture's encoder or is
refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from scvi.nn import FCLayers
from torch import nn
from torch.nn import functional as F

from scmixvae.mixture import ComponentCodedLinear, MixtureNormal, StackedEncoder

# keys of scvi-tools' ``extra_encoder_kwargs`` the mixture encoders honour
SUPPORTED_ENCODER_KWARGS = ("var_eps", "activation_fn", "bias", "use_activation")
DEFAULT_HEAD_HIDDEN = 64


class SharedTrunkEncoder(nn.Module):
    r"""``S`` Gaussian encoders amortized over one network (Hotti et al., 2024).

    scVI's encoder layers (:class:`scvi.nn.FCLayers`, with its covariates, batch or layer
    normalisation and dropout) form a trunk :math:`h = f(x)` that runs once per cell. A small
    head conditioned on each component's code gives the component's mean and variance:
    :math:`a_s = \mathrm{act}(W h + b + C_s)`, then :math:`(\mu_s, v_s)` from a coded linear
    map of :math:`a_s` (:class:`~scmixvae.mixture.ComponentCodedLinear`). All ``S`` heads run as
    one broadcast operation; a component costs ``n_head_hidden + 2 * n_output`` parameters.

    The head has no normalisation or dropout of its own: those act on the trunk, shared by
    every component, as in scVI's encoder, and per-component dropout masks would cost a random
    draw per component and unit. With ``S = 1``, no batch or layer norm and no dropout the
    module is exactly an :class:`scvi.nn.Encoder` of ``n_layers + 1`` layers (tested).

    Parameters
    ----------
    n_components
        ``S``.
    n_input, n_output
        Input width and latent dimension ``D``.
    n_cat_list
        Categories per categorical covariate, one-hot encoded into the trunk (and into the head
        when ``inject_covariates``).
    n_layers, n_hidden, dropout_rate
        The trunk, as :class:`scvi.nn.Encoder`.
    n_head_hidden
        Width of the head's hidden layer. Per-step cost grows with ``S * n_head_hidden``.
    var_eps, var_activation
        Variance floor and positivity map, as :class:`scvi.nn.Encoder`.
    use_batch_norm, use_layer_norm, inject_covariates, activation_fn, bias, use_activation
        As :class:`scvi.nn.FCLayers`, for the trunk; the head uses ``activation_fn`` and
        ``bias``.
    """

    def __init__(
        self,
        n_components: int,
        n_input: int,
        n_output: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        n_head_hidden: int = DEFAULT_HEAD_HIDDEN,
        dropout_rate: float = 0.1,
        var_eps: float = 1e-4,
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        activation_fn: type[nn.Module] = nn.ReLU,
        bias: bool = True,
        use_activation: bool = True,
    ):
        super().__init__()
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        self.n_components = n_components
        self.n_output = n_output
        self.var_eps = var_eps
        self.var_activation = torch.exp if var_activation is None else var_activation
        self.inject_covariates = inject_covariates
        self.trunk = FCLayers(
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            use_activation=use_activation,
            bias=bias,
            inject_covariates=inject_covariates,
            activation_fn=activation_fn,
        )
        n_head_in = n_hidden + self.trunk.n_cov * inject_covariates
        self.head = ComponentCodedLinear(n_components, n_head_in, n_head_hidden, bias=bias)
        self.head_activation = activation_fn()
        # mean and variance from one map: one matmul over [B, S, n_head_hidden] instead of two
        self.head_out = ComponentCodedLinear(n_components, n_head_hidden, 2 * n_output)

    def trunk_parameters(self) -> int:
        """Number of parameters of the trunk (the part shared by every component)."""
        return sum(p.numel() for p in self.trunk.parameters())

    def _covariates(self, cat_list: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        one_hot = [
            cat if cat.shape[-1] == n_cat else F.one_hot(cat.squeeze(-1).long(), n_cat)
            for n_cat, cat in zip(self.trunk.n_cat_list, cat_list, strict=False)
            if n_cat > 1
        ]
        return torch.cat(one_hot, dim=-1).float() if one_hot else None

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor) -> MixtureNormal:
        """Encode ``x [B, n_input]`` into the mixture ``[S, B, D]``."""
        h = self.trunk(x, *cat_list)
        covariates = self._covariates(cat_list) if self.inject_covariates else None
        if covariates is not None:
            h = torch.cat((h, covariates.to(h.dtype)), dim=-1)
        hidden = self.head_activation(self.head(h, per_component=False))  # [B, S, H]
        loc, raw_var = self.head_out(hidden, per_component=True).split(self.n_output, dim=-1)
        var = self.var_activation(raw_var) + self.var_eps
        return MixtureNormal(loc.transpose(0, 1), var.sqrt().transpose(0, 1))


def check_encoder_kwargs(extra_encoder_kwargs: dict | None) -> None:
    """Refuse, by name, the ``extra_encoder_kwargs`` keys the mixture encoders cannot honour."""
    unknown = sorted(set(extra_encoder_kwargs or {}) - set(SUPPORTED_ENCODER_KWARGS))
    if unknown:
        raise ValueError(
            f"extra_encoder_kwargs {unknown} are not supported by the mixture encoder; "
            f"supported: {list(SUPPORTED_ENCODER_KWARGS)}."
        )


def build_mixture_encoder(
    n_components: int,
    shared: bool,
    n_input: int,
    n_output: int,
    n_cat_list: list[int] | None,
    n_layers: int,
    n_hidden: int,
    dropout_rate: float,
    use_batch_norm: bool,
    use_layer_norm: bool,
    inject_covariates: bool,
    var_activation: Callable[[torch.Tensor], torch.Tensor] | None,
    extra_encoder_kwargs: dict | None = None,
    n_head_hidden: int | None = None,
) -> nn.Module:
    """The mixture encoder for the options scVI's ``VAE`` gives its :class:`scvi.nn.Encoder`.

    ``shared`` picks :class:`SharedTrunkEncoder` (``n_head_hidden`` sets its head's width) over
    :class:`~scmixvae.mixture.StackedEncoder`.

    Raises
    ------
    ValueError
        For an ``extra_encoder_kwargs`` key the mixture encoders cannot honour, or a head width
        without a shared encoder.
    """
    if n_head_hidden is not None and not shared:
        raise ValueError("n_head_hidden sets the shared encoder's head: use shared_encoder=True.")
    check_encoder_kwargs(extra_encoder_kwargs)
    extra = dict(extra_encoder_kwargs or {})
    options = {
        "n_cat_list": n_cat_list,
        "n_layers": n_layers,
        "n_hidden": n_hidden,
        "dropout_rate": dropout_rate,
        "var_activation": var_activation,
        "use_batch_norm": use_batch_norm,
        "use_layer_norm": use_layer_norm,
        "inject_covariates": inject_covariates,
        **extra,
    }
    if shared:
        head = {} if n_head_hidden is None else {"n_head_hidden": n_head_hidden}
        return SharedTrunkEncoder(n_components, n_input, n_output, **head, **options)
    return StackedEncoder(n_components, n_input, n_output, **options)
