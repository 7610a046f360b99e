"""S encoder networks evaluated as one module, weights stacked along a component axis.

The layers mirror :class:`scvi.nn.FCLayers` / :class:`scvi.nn.Encoder` option for option (hidden
layers, dropout, batch/layer norm, covariates injected into every layer, variance activation and
floor), so component ``k`` of a :class:`StackedEncoder` computes exactly what an
``scvi.nn.Encoder`` with the same weights computes. The forward pass is a handful of batched
matmuls whatever ``S`` is: the input is shared by all components, so the first layer is one
``[B, G] x [G, S*H]`` GEMM, deeper layers one batched matmul each. Activations are laid out
``[B, S, H]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .distribution import MixtureNormal


class StackedLinear(nn.Module):
    """``S`` independent affine maps applied in one call.

    Parameters
    ----------
    n_stack
        Number of stacked maps ``S``.
    n_in, n_out
        Input and output width of each map.
    bias
        Learn an additive bias.
    """

    def __init__(self, n_stack: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.n_stack, self.n_in, self.n_out = n_stack, n_in, n_out
        # same layout as nn.Linear per component ([out, in]) so weights copy across directly
        self.weight = nn.Parameter(torch.empty(n_stack, n_out, n_in))
        self.bias = nn.Parameter(torch.empty(n_stack, n_out)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every component as :class:`torch.nn.Linear` would."""
        bound = 1 / math.sqrt(self.n_in) if self.n_in > 0 else 0.0
        for k in range(self.n_stack):  # init only, not the forward pass
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
            if self.bias is not None:
                nn.init.uniform_(self.bias[k], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every map.

        Parameters
        ----------
        x
            ``[B, n_in]`` (one input shared by all maps) or ``[B, S, n_in]``.

        Returns
        -------
        ``[B, S, n_out]``.
        """
        if x.dim() == 2:
            out = (x @ self.weight.reshape(-1, self.n_in).T).view(
                x.shape[0], self.n_stack, self.n_out
            )
        elif x.dim() == 3:
            out = torch.einsum("bsi,soi->bso", x, self.weight)
        else:
            raise ValueError(f"expected [B, n_in] or [B, S, n_in] input, got {tuple(x.shape)}.")
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"n_stack={self.n_stack}, n_in={self.n_in}, n_out={self.n_out}"


class StackedBatchNorm1d(nn.Module):
    """Batch normalisation with separate statistics and affine parameters per component.

    Defaults follow :class:`scvi.nn.FCLayers` (``eps=1e-3``, ``momentum=0.01``).
    """

    def __init__(self, n_stack: int, n_features: int, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(n_stack, n_features))
        self.bias = nn.Parameter(torch.zeros(n_stack, n_features))
        self.register_buffer("running_mean", torch.zeros(n_stack, n_features))
        self.register_buffer("running_var", torch.ones(n_stack, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[B, S, n_features]``."""
        flat = x.reshape(x.shape[0], -1)
        # the flattened buffers are views, so the in-place running-stat update lands in them
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
        return out.view_as(x)


class StackedLayer(nn.Module):
    """Linear -> [BatchNorm] -> [LayerNorm] -> [activation] -> [dropout], stacked over S."""

    def __init__(
        self,
        n_stack: int,
        n_in: int,
        n_out: int,
        use_batch_norm: bool,
        use_layer_norm: bool,
        use_activation: bool,
        bias: bool,
        dropout_rate: float,
        activation_fn: type[nn.Module],
    ):
        super().__init__()
        self.linear = StackedLinear(n_stack, n_in, n_out, bias=bias)
        self.batch_norm = StackedBatchNorm1d(n_stack, n_out) if use_batch_norm else None
        self.use_layer_norm = use_layer_norm
        self.activation = activation_fn() if use_activation else None
        self.dropout = nn.Dropout(p=dropout_rate) if dropout_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        if self.use_layer_norm:
            x = F.layer_norm(x, x.shape[-1:])
        if self.activation is not None:
            x = self.activation(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class StackedFCLayers(nn.Module):
    """Stacked counterpart of :class:`scvi.nn.FCLayers`.

    Parameters
    ----------
    n_stack
        Number of stacked networks ``S``.
    n_in, n_out
        Input and output width.
    n_cat_list
        Number of categories of each categorical covariate, one-hot encoded (``1`` is ignored).
        Continuous covariates are part of the input, as scVI's encoders take them.
    n_layers, n_hidden
        Depth and width.
    dropout_rate
        Dropout after each layer.
    use_batch_norm, use_layer_norm, use_activation, bias
        As in :class:`scvi.nn.FCLayers`.
    inject_covariates
        Concatenate covariates to the input of every layer, not just the first.
    activation_fn
        Activation module class.
    """

    def __init__(
        self,
        n_stack: int,
        n_in: int,
        n_out: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        use_activation: bool = True,
        bias: bool = True,
        inject_covariates: bool = True,
        activation_fn: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.inject_covariates = inject_covariates
        self.n_cat_list = [n if n > 1 else 0 for n in (n_cat_list or [])]
        self.n_cov = sum(self.n_cat_list)
        dims = [n_in] + (n_layers - 1) * [n_hidden] + [n_out]
        self.layers = nn.ModuleList(
            StackedLayer(
                n_stack,
                d_in + self.n_cov * self._inject_into_layer(i),
                d_out,
                use_batch_norm=use_batch_norm,
                use_layer_norm=use_layer_norm,
                use_activation=use_activation,
                bias=bias,
                dropout_rate=dropout_rate,
                activation_fn=activation_fn,
            )
            for i, (d_in, d_out) in enumerate(itertools.pairwise(dims))
        )

    def _inject_into_layer(self, layer_index: int) -> bool:
        return layer_index == 0 or self.inject_covariates

    def _covariates(self, cat_list: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
        if len(self.n_cat_list) > len(cat_list):
            raise ValueError(
                f"expected {len(self.n_cat_list)} categorical covariates, got {len(cat_list)}."
            )
        covs = []
        for n_cat, cat in zip(self.n_cat_list, cat_list, strict=False):
            if n_cat == 0:
                continue
            if cat is None:
                raise ValueError("a categorical covariate declared at init was not provided.")
            covs.append(
                cat if cat.shape[-1] == n_cat else F.one_hot(cat.squeeze(-1).long(), n_cat)
            )
        if not covs:
            return None
        return torch.cat([c.float() for c in covs], dim=-1)

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor | None) -> torch.Tensor:
        """Run all ``S`` networks.

        Parameters
        ----------
        x
            Shared input ``[B, n_in]``.
        *cat_list
            Category indices ``[B, 1]`` (or one-hot ``[B, n_cat]``) per categorical covariate.

        Returns
        -------
        ``[B, S, n_out]``.
        """
        cov = self._covariates(cat_list)
        for i, layer in enumerate(self.layers):
            if cov is not None and self._inject_into_layer(i):
                c = cov.to(x.dtype)
                if x.dim() == 3:
                    c = c.unsqueeze(1).expand(-1, x.shape[1], -1)
                x = torch.cat((x, c), dim=-1)
            x = layer(x)
        return x


class StackedEncoder(nn.Module):
    r"""``S`` Gaussian encoders :math:`q_s(z \mid x)` sharing an input, run as one module.

    Stacked counterpart of :class:`scvi.nn.Encoder`; returns the uniform mixture of the
    ``S`` Gaussians.

    Parameters
    ----------
    n_components
        Number of encoders ``S`` (``>= 1``).
    n_input
        Input width.
    n_output
        Latent dimension ``D``.
    n_cat_list
        Categories per categorical covariate (see :class:`StackedFCLayers`).
    n_layers, n_hidden, dropout_rate
        Network shape, as :class:`scvi.nn.Encoder`.
    var_eps
        Floor added to every variance.
    var_activation
        Maps the raw output to a positive variance; :func:`torch.exp` by default.
    **kwargs
        Passed to :class:`StackedFCLayers` (``use_batch_norm``, ``use_layer_norm``,
        ``inject_covariates``, ``activation_fn``, ...).

    Examples
    --------
    >>> enc = StackedEncoder(n_components=5, n_input=2000, n_output=10)
    >>> qz = enc(torch.rand(128, 2000))
    >>> qz.component_loc.shape
    torch.Size([5, 128, 10])
    """

    def __init__(
        self,
        n_components: int,
        n_input: int,
        n_output: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        var_eps: float = 1e-4,
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ):
        super().__init__()
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        self.n_components = n_components
        self.var_eps = var_eps
        self.var_activation = torch.exp if var_activation is None else var_activation
        self.encoder = StackedFCLayers(
            n_components,
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            **kwargs,
        )
        self.mean_encoder = StackedLinear(n_components, n_hidden, n_output)
        self.var_encoder = StackedLinear(n_components, n_hidden, n_output)

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor | None) -> MixtureNormal:
        """Encode ``x`` ``[B, n_input]`` into the mixture ``[S, B, D]``."""
        hidden = self.encoder(x, *cat_list)
        loc = self.mean_encoder(hidden)
        var = self.var_activation(self.var_encoder(hidden)) + self.var_eps
        return MixtureNormal(loc.transpose(0, 1), var.sqrt().transpose(0, 1))

    @torch.no_grad()
    def load_component_(self, k: int, encoder: nn.Module) -> StackedEncoder:
        """Copy the weights of a single :class:`scvi.nn.Encoder` into component ``k``.

        Parameters
        ----------
        k
            Component index.
        encoder
            An encoder with scvi-tools' layout (``encoder.fc_layers``, ``mean_encoder``,
            ``var_encoder``) and the same shape options.

        Returns
        -------
        ``self``, for chaining.
        """
        sequences = list(encoder.encoder.fc_layers)
        if len(sequences) != len(self.encoder.layers):
            raise ValueError(
                f"layer count differs: {len(sequences)} in the source, "
                f"{len(self.encoder.layers)} here."
            )
        for stacked, seq in zip(self.encoder.layers, sequences, strict=True):
            modules = [m for m in seq if m is not None]
            linear = next(m for m in modules if isinstance(m, nn.Linear))
            _copy_linear(stacked.linear, k, linear)
            batch_norm = next((m for m in modules if isinstance(m, nn.BatchNorm1d)), None)
            if (batch_norm is None) != (stacked.batch_norm is None):
                raise ValueError("batch-norm usage differs between source and stacked encoder.")
            if batch_norm is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(stacked.batch_norm, name)[k].copy_(getattr(batch_norm, name))
        _copy_linear(self.mean_encoder, k, encoder.mean_encoder)
        _copy_linear(self.var_encoder, k, encoder.var_encoder)
        return self


def _copy_linear(stacked: StackedLinear, k: int, linear: nn.Linear) -> None:
    if stacked.weight[k].shape != linear.weight.shape:
        raise ValueError(
            f"weight shape differs: {tuple(linear.weight.shape)} in the source, "
            f"{tuple(stacked.weight[k].shape)} here."
        )
    stacked.weight[k].copy_(linear.weight)
    if stacked.bias is not None:
        stacked.bias[k].copy_(linear.bias)
