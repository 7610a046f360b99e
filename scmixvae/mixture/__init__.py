"""The mixture posterior and its estimators, written once for every data domain (torch only).

``bounds`` is the estimator core (per-draw terms, objectives, bound, JSD, importance weights,
held-out likelihood); ``distribution`` the mixture posterior and component sampling;
``stacked_encoder`` S separate encoders run as one module; ``amortized`` the layer that lets one
network serve every component; ``priors`` the latent priors (standard normal, VampPrior through
the mixture encoder, a learned Gaussian mixture) and ``flows`` the latent flow shared by the
components, which every domain picks by name.
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
from .flows import FlowTransform, LatentFlow, flowed_terms, validate_flow
from .priors import (
    PRIORS,
    MixtureOfGaussiansPrior,
    PriorName,
    StandardNormalPrior,
    VampPrior,
    validate_prior,
)
from .stacked_encoder import (
    StackedBatchNorm1d,
    StackedEncoder,
    StackedFCLayers,
    StackedLinear,
)

__all__ = [
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "PRIORS",
    "ComponentCodedLinear",
    "DrawTerms",
    "FlowTransform",
    "LatentFlow",
    "MixtureNormal",
    "MixtureOfGaussiansPrior",
    "NLLEstimator",
    "Objective",
    "PriorName",
    "StackedBatchNorm1d",
    "StackedEncoder",
    "StackedFCLayers",
    "StackedLinear",
    "StandardNormalPrior",
    "VampPrior",
    "accumulate_log_weights",
    "bound",
    "component_responsibilities",
    "flowed_terms",
    "gaussian_log_prob_matrix",
    "jsd",
    "kl_term",
    "log_likelihood_from_sums",
    "log_mean_exp",
    "log_weights",
    "mixture_densities",
    "sample_components",
    "validate_flow",
    "validate_objective",
    "validate_prior",
]
