"""The mixture posterior and its estimators, written once for every data domain (torch only).

``bounds`` is the estimator core (per-draw terms, objectives, bound, JSD, importance weights,
held-out likelihood); ``distribution`` the mixture posterior and component sampling;
``stacked_encoder`` S separate encoders run as one module; ``amortized`` the layer that lets one
network serve every component.
"""

from .amortized import ComponentCodedLinear
from .bounds import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    DrawTerms,
    NLLEstimator,
    Objective,
    accumulate_log_weights,
    bound,
    jsd,
    kl_term,
    log_likelihood_from_sums,
    log_mean_exp,
    log_weights,
    mixture_densities,
    validate_objective,
)
from .diagnostics import component_responsibilities
from .distribution import MixtureNormal, gaussian_log_prob_matrix, sample_components
from .stacked_encoder import (
    StackedBatchNorm1d,
    StackedEncoder,
    StackedFCLayers,
    StackedLinear,
)

__all__ = [
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "ComponentCodedLinear",
    "DrawTerms",
    "MixtureNormal",
    "NLLEstimator",
    "Objective",
    "StackedBatchNorm1d",
    "StackedEncoder",
    "StackedFCLayers",
    "StackedLinear",
    "accumulate_log_weights",
    "bound",
    "component_responsibilities",
    "gaussian_log_prob_matrix",
    "jsd",
    "kl_term",
    "log_likelihood_from_sums",
    "log_mean_exp",
    "log_weights",
    "mixture_densities",
    "sample_components",
    "validate_objective",
]
