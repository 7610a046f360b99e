r"""Amortized mixture components: one network for all components, told apart by a code.

Hotti et al. (ICML 2024) amortize the ``S`` encoders of a mixture: a trunk maps the input to a
representation :math:`h` once, and a small head :math:`g(h, e_s)` gives component ``s``'s
parameters from :math:`h` and the one-hot code :math:`e_s`. A linear layer of the concatenation
:math:`[h, e_s]` is :math:`W h + b + C_{:, s}`: the shared product :math:`W h` is computed once
per observation and each component adds its own column :math:`C_{:, s}`, so a component costs
``n_out`` parameters per coded layer and all ``S`` heads run as one broadcast.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ComponentCodedLinear(nn.Module):
    r"""Affine map of :math:`[h, e_s]` for every component ``s`` at once.

    .. math:: y_s = W h + b + C_s

    Parameters
    ----------
    n_components
        ``S``.
    n_in, n_out
        Width of :math:`h` and of the output.
    bias
        Learn the shared bias :math:`b`.

    Examples
    --------
    >>> layer = ComponentCodedLinear(n_components=50, n_in=128, n_out=64)
    >>> layer(torch.randn(32, 128), per_component=False).shape
    torch.Size([32, 50, 64])
    >>> layer(torch.randn(32, 50, 128), per_component=True).shape
    torch.Size([32, 50, 64])
    """

    def __init__(self, n_components: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.n_components, self.n_in, self.n_out = n_components, n_in, n_out
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        self.code = nn.Parameter(torch.empty(n_components, n_out))
        self.reset_code()

    @torch.no_grad()
    def reset_code(self) -> None:
        """Draw the codes on the scale of :class:`torch.nn.Linear`'s bias.

        Distinct random codes are what makes the components differ at the start: identical
        components get identical gradients under MISELBO and would stay identical.
        """
        bound = 1 / math.sqrt(self.n_in) if self.n_in > 0 else 0.0
        nn.init.uniform_(self.code, -bound, bound)

    def forward(self, h: torch.Tensor, per_component: bool) -> torch.Tensor:
        """Apply every component's map.

        Parameters
        ----------
        h
            ``[..., n_in]`` shared by all components (``per_component=False``), or
            ``[..., S, n_in]``, one input per component (``per_component=True``).
        per_component
            Which of the two layouts ``h`` has.

        Returns
        -------
        ``[..., S, n_out]``.
        """
        if per_component and (h.dim() < 2 or h.shape[-2] != self.n_components):
            raise ValueError(
                f"per-component input must have shape [..., {self.n_components}, {self.n_in}], "
                f"got {tuple(h.shape)}."
            )
        out = self.linear(h)
        return (out if per_component else out.unsqueeze(-2)) + self.code

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, n_in={self.n_in}, n_out={self.n_out}"
