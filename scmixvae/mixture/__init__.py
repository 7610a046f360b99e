"""The mixture posterior and MISELBO, written once for every data domain (torch only)."""

from .bounds import (
    ensemble_elbo,
    importance_sampled_log_likelihood,
    log_mean_exp,
    miselbo,
    mixture_log_weights,
    stratified_bound,
)
from .diagnostics import component_responsibilities, effective_sample_size, generalized_jsd
from .distribution import MixtureNormal
from .stacked_encoder import (
    StackedBatchNorm1d,
    StackedEncoder,
    StackedFCLayers,
    StackedLinear,
)

__all__ = [
    "MixtureNormal",
    "StackedBatchNorm1d",
    "StackedEncoder",
    "StackedFCLayers",
    "StackedLinear",
    "component_responsibilities",
    "effective_sample_size",
    "ensemble_elbo",
    "generalized_jsd",
    "importance_sampled_log_likelihood",
    "log_mean_exp",
    "miselbo",
    "mixture_log_weights",
    "stratified_bound",
]
