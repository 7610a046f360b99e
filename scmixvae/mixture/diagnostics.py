r"""Diagnostics of a mixture posterior: which component carries each observation.

The divergence between the components is :func:`scmixvae.mixture.jsd`, in the estimator core.
"""

from __future__ import annotations

import torch


def component_responsibilities(log_weight_sums: torch.Tensor) -> torch.Tensor:
    r"""Share of the importance-sampled likelihood contributed by each component's draws.

    With stratified draws and weights :math:`w = p(x, z) / q_{\mathrm{mix}}(z)`, component
    ``s`` accounts for :math:`\sum_l w_{s,l} / \sum_{s',l} w_{s',l}` of the estimate of
    :math:`p(x)`: the components that sit on the true posterior get the mass.

    Parameters
    ----------
    log_weight_sums
        ``[S, B]``: :math:`\log \sum_l w_{s,l}` per component, as
        :func:`~scmixvae.mixture.accumulate_log_weights` returns.

    Returns
    -------
    ``[S, B]``, summing to one over components.
    """
    return torch.softmax(log_weight_sums, dim=0)
