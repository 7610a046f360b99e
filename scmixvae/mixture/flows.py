r"""A latent flow shared by every mixture component: the cookbook's flow recipe, written once.

A draw :math:`z_0 \sim q_{\mathrm{mix}}(\cdot \mid x)` is pushed through an invertible map
:math:`z = f(z_0)`, the same for every component, so every density of the draw changes by the
same log-determinant:

.. math::
    \log q_j(z \mid x) = \log q_j(z_0 \mid x)
    - \log \lvert\det \partial f / \partial z_0\rvert

for each component ``j``, hence for the mixture, the drawing component and any sub-mixture.
:func:`flowed_terms` applies that to :class:`~scmixvae.mixture.DrawTerms`, after which every
bound, divergence and importance weight of :mod:`scmixvae.mixture.bounds` is unchanged. (The
JSD and the responsibilities do not change at all: the log-determinant cancels.)

The map is a stack of inverse autoregressive flow steps in the numerically stable form of
Kingma et al. (2016), :math:`z' = \sigma \odot z + (1 - \sigma) \odot m`, from pyro-ppl
(:class:`pyro.distributions.transforms.AffineAutoregressive` with ``stable=True`` over a MADE,
:class:`pyro.nn.AutoRegressiveNN`), the autoregressive order reversed every other step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from .bounds import DrawTerms

DEFAULT_FLOW_HIDDEN = 100  # the width of the method's IAF (Kingma et al.; the composite model)


def validate_flow(flow_steps: int, n_latent: int) -> int:
    """Return ``flow_steps`` if a flow of that length can act on ``n_latent`` dimensions."""
    if isinstance(flow_steps, bool) or not isinstance(flow_steps, int) or flow_steps < 0:
        raise ValueError(f"flow_steps must be an integer >= 0, got {flow_steps!r}.")
    if flow_steps > 0 and n_latent < 2:
        raise ValueError(
            f"flow_steps={flow_steps} needs a latent of at least 2 dimensions (an autoregressive "
            f"flow on 1 dimension is an affine map), got n_latent={n_latent}."
        )
    return flow_steps


class LatentFlow(nn.Module):
    """``flow_steps`` stable IAF steps on ``n_latent`` dimensions (pyro-ppl).

    Parameters
    ----------
    n_latent
        ``D`` (at least 2).
    flow_steps
        Number of steps (at least 1).
    n_hidden
        Width of each step's MADE.
    """

    def __init__(self, n_latent: int, flow_steps: int, n_hidden: int = DEFAULT_FLOW_HIDDEN):
        super().__init__()
        validate_flow(flow_steps, n_latent)
        if flow_steps < 1:
            raise ValueError("LatentFlow needs flow_steps >= 1 (use no flow for 0).")
        order = torch.arange(n_latent)
        # fixed orders (not pyro's random default): no draw from the global generator, and
        # the same model for the same seed whether or not a flow is built
        self.steps = nn.ModuleList(
            AffineAutoregressive(
                AutoRegressiveNN(
                    n_latent, [n_hidden], permutation=order.flip(0) if i % 2 else order
                ),
                stable=True,
            )
            for i in range(flow_steps)
        )

    def forward(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z0 [..., D]`` -> ``(z [..., D], log |det dz/dz0| [...])``."""
        log_det = torch.zeros(z0.shape[:-1], dtype=z0.dtype, device=z0.device)
        z = z0
        for step in self.steps:
            z_next = step(z)
            log_det = log_det + step.log_abs_det_jacobian(z, z_next)
            z = z_next
        return z, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [..., D]`` -> ``(z0, log |det dz/dz0|)`` at the recovered ``z0``.

        Each step inverts in ``D`` passes of its MADE (the price of an IAF); used only for
        densities at points that were not drawn by the flow (importance weights of other
        cells' draws, the aggregated posterior).
        """
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in reversed(self.steps):
            z_prev = step.inv(z)
            # pyro keeps the scales of the inversion for exactly this pair: no extra pass
            log_det = log_det + step.log_abs_det_jacobian(z_prev, z)
            z = z_prev
        return z, log_det


def flowed_terms(terms: DrawTerms, log_det: torch.Tensor) -> DrawTerms:
    """Draw terms of ``z = f(z0)`` from those of the base draws ``z0``, ``log_det [L, A, B]``.

    Every posterior density loses the flow's log-determinant; the closed-form KL is dropped (a
    flowed component is no longer Gaussian).
    """
    return replace(
        terms,
        log_q_mix=terms.log_q_mix - log_det,
        log_q_own=terms.log_q_own - log_det,
        log_q_sub=None if terms.log_q_sub is None else terms.log_q_sub - log_det,
        kl_own=None,
    )


class FlowTransform(torch.distributions.Transform):
    """:class:`LatentFlow` as a :class:`torch.distributions.Transform`, so that
    :class:`~torch.distributions.TransformedDistribution` gives flowed densities (the
    aggregated posterior of a flowed model)."""

    domain = torch.distributions.constraints.real_vector
    codomain = torch.distributions.constraints.real_vector
    bijective = True

    def __init__(self, flow: LatentFlow):
        super().__init__(cache_size=0)
        self.flow = flow
        self._last_inverse: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x, log_det = self.flow.inverse(y)
        self._last_inverse = (x, y, log_det)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # log_prob inverts y, then asks for this at the pair: reuse the inversion's value
        # rather than run the flow forward again
        last = self._last_inverse
        if last is not None and x is last[0] and y is last[1]:
            return last[2]
        return self.flow(x)[1]
