"""Building blocks of the image VAEs: gated dense layers, masked (PixelCNN) convolutions.

The latent flow and the priors are domain-free: :mod:`scmixvae.mixture`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from scmixvae.mixture import ComponentCodedLinear, StackedLinear


class GatedDense(nn.Module):
    """``h = W_h x * sigmoid(W_g x)`` (Dauphin et al.), as in the VampPrior architectures."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class StackedGatedDense(nn.Module):
    """``S`` gated dense layers in one call; input ``[B, n_in]`` (shared) or ``[B, S, n_in]``."""

    def __init__(self, n_stack: int, n_in: int, n_out: int):
        super().__init__()
        self.linear = StackedLinear(n_stack, n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class CodedGatedDense(nn.Module):
    """Gated dense layer of ``[h, e_s]`` for every component code ``e_s`` at once.

    Input ``[..., n_in]`` shared by all components (``per_component=False``) or
    ``[..., S, n_in]``; output ``[..., S, n_out]``.
    """

    def __init__(self, n_components: int, n_in: int, n_out: int):
        super().__init__()
        self.linear = ComponentCodedLinear(n_components, n_in, 2 * n_out)

    def forward(self, x: torch.Tensor, per_component: bool) -> torch.Tensor:
        h, g = self.linear(x, per_component=per_component).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


def _scale_from_log_var(log_var: torch.Tensor) -> torch.Tensor:
    # VampPrior's code clamps the log-variance to [-6, 2] with a hardtanh
    return torch.exp(0.5 * F.hardtanh(log_var, -6.0, 2.0))


class GaussianHead(nn.Module):
    """Mean and log-variance (clamped to ``[-6, 2]`` by hardtanh, as in VampPrior's code)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.loc = nn.Linear(n_in, n_out)
        self.log_var = nn.Linear(n_in, n_out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), _scale_from_log_var(self.log_var(h))


class StackedGaussianHead(nn.Module):
    """Stacked :class:`GaussianHead`: ``[B, S, n_in]`` -> loc, scale ``[S, B, n_out]``."""

    def __init__(self, n_stack: int, n_in: int, n_out: int):
        super().__init__()
        self.loc = StackedLinear(n_stack, n_in, n_out)
        self.log_var = StackedLinear(n_stack, n_in, n_out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h).movedim(-2, 0), _scale_from_log_var(self.log_var(h)).movedim(-2, 0)


class CodedGaussianHead(nn.Module):
    """Amortized :class:`StackedGaussianHead`: ``[..., S, n_in]`` -> loc, scale ``[S, ..., out]``.

    One map for all components, told apart by their codes
    (:class:`~scmixvae.mixture.ComponentCodedLinear`).
    """

    def __init__(self, n_components: int, n_in: int, n_out: int):
        super().__init__()
        self.loc = ComponentCodedLinear(n_components, n_in, n_out)
        self.log_var = ComponentCodedLinear(n_components, n_in, n_out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.loc(h, per_component=True).movedim(-2, 0)
        scale = _scale_from_log_var(self.log_var(h, per_component=True)).movedim(-2, 0)
        return loc, scale


# ---------------------------------------------------------------------------------------------
# PixelCNN


class MaskedConv2d(nn.Conv2d):
    """Convolution that sees only pixels above, and to the left on the same row.

    Mask ``"A"`` also hides the centre pixel (first layer: the output at ``i`` must not see
    pixel ``i``); mask ``"B"`` keeps it (later layers).
    """

    def __init__(self, mask_type: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}.")
        _, _, height, width = self.weight.shape
        mask = torch.ones_like(self.weight)
        mask[:, :, height // 2, width // 2 + (mask_type == "B") :] = 0
        mask[:, :, height // 2 + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class PixelCNNDecoder(nn.Module):
    """Bernoulli PixelCNN over a 28x28 image, conditioned on a latent code.

    The code is mapped to a 28x28 map and added to every layer's pre-activation, so the
    autoregressive masks apply to the pixels only.
    """

    def __init__(self, n_code: int, n_channels: int = 32, n_layers: int = 4, image_side: int = 28):
        super().__init__()
        self.side = image_side
        self.code_to_map = nn.Linear(n_code, image_side * image_side)
        self.first = MaskedConv2d("A", 1, n_channels, 7, padding=3)
        self.hidden = nn.ModuleList(
            MaskedConv2d("B", n_channels, n_channels, 3, padding=1) for _ in range(n_layers - 1)
        )
        self.condition = nn.ModuleList(nn.Conv2d(1, n_channels, 1) for _ in range(n_layers))
        self.out = nn.Conv2d(n_channels, 1, 1)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``[N, side*side]`` for images ``x [N, side*side]``."""
        n = x.shape[0]
        image = x.view(n, 1, self.side, self.side)
        cond = self.code_to_map(code).view(n, 1, self.side, self.side)
        h = F.relu(self.first(image) + self.condition[0](cond))
        for conv, cond_conv in zip(self.hidden, self.condition[1:], strict=True):
            h = F.relu(conv(h) + cond_conv(cond))
        return self.out(h).view(n, -1)
