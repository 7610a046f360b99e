"""The mixture posterior and MISELBO, written once for every data domain (torch only)."""

from .bounds import (
    accumulate_log_weights,
    ensemble_elbo,
    importance_sampled_log_likelihood,
    log_likelihood_from_sums,
    log_mean_exp,
    miselbo,
    mixture_log_weights,
    stratified_bound,
)
from .diagnostics import component_responsibilities, effective_sample_size, generalized_jsd
from .distribution import MixtureNormal, gaussian_log_prob_matrix
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
    "accumulate_log_weights",
    "component_responsibilities",
    "effective_sample_size",
    "ensemble_elbo",
    "gaussian_log_prob_matrix",
    "generalized_jsd",
    "importance_sampled_log_likelihood",
    "log_likelihood_from_sums",
    "log_mean_exp",
    "miselbo",
    "mixture_log_weights",
    "stratified_bound",
]
