"""The domain-free priors and latent flow of scmixvae.mixture, and the image models use them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from scmixvae.image.models import build_model
from scmixvae.mixture import (
    DrawTerms,
    LatentFlow,
    MixtureNormal,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    VampPrior,
    bound,
    flowed_terms,
    jsd,
    validate_flow,
    validate_prior,
)


def _perturbed_flow(n_latent: int, steps: int) -> LatentFlow:
    flow = LatentFlow(n_latent, steps, n_hidden=16)  # float32: pyro inverts in the default dtype
    with torch.no_grad():  # away from the near-identity start, so the test can fail
        for p in flow.parameters():
            p.normal_(0, 0.4)
    return flow


def test_flow_log_determinant_matches_autograd_and_inverts():
    torch.manual_seed(2)
    flow = _perturbed_flow(5, 3)
    z0 = torch.randn(5)
    z, log_det = flow(z0)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z0)
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign > 0
    torch.testing.assert_close(log_det, expected, atol=1e-4, rtol=1e-4)
    back, log_det_back = flow.inverse(z)
    torch.testing.assert_close(back, z0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det_back, log_det, atol=1e-5, rtol=1e-5)
    # a step is autoregressive in its own order: the first step's Jacobian is triangular
    step = torch.autograd.functional.jacobian(lambda v: flow.steps[0](v), z0)
    torch.testing.assert_close(step, step.tril())
    assert torch.count_nonzero(step.tril(-1)) > 0


def test_flowed_terms_shift_every_density_and_keep_the_divergence():
    torch.manual_seed(0)
    q = MixtureNormal(torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.5)
    component = torch.arange(3).unsqueeze(1).expand(3, 4)
    z0 = q.rsample_components(component, 2)
    terms = q.draw_terms(
        z0, component, log_px_z=torch.randn(2, 3, 4), log_pz=torch.randn(2, 3, 4),
        kl_own=torch.rand(3, 4),
    )  # fmt: skip
    log_det = torch.randn(2, 3, 4)
    flowed = flowed_terms(terms, log_det)
    torch.testing.assert_close(flowed.log_q_mix, terms.log_q_mix - log_det)
    torch.testing.assert_close(flowed.log_q_own, terms.log_q_own - log_det)
    assert flowed.kl_own is None  # a flowed component is not Gaussian: no closed form
    torch.testing.assert_close(jsd(flowed), jsd(terms))
    # MISELBO of the flowed draws: the Monte Carlo KL against the flowed mixture density
    expected = (terms.log_px_z + terms.log_pz - terms.log_q_mix + log_det).mean((0, 1))
    torch.testing.assert_close(bound(flowed), expected)


class _Encoder(nn.Module):
    """A two-component linear Gaussian encoder ``[K, 3] -> MixtureNormal [2, K, 2]``."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(3, 4)
        self.log_scale = nn.Linear(3, 4)

    def forward(self, u):
        loc = self.loc(u).view(-1, 2, 2).movedim(1, 0)
        scale = self.log_scale(u).view(-1, 2, 2).movedim(1, 0).exp()
        return MixtureNormal(loc, scale)


class _Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.prior = VampPrior(torch.randn(5, 3), encode=self.encode)

    def encode(self, u):
        return self.encoder(u)


def test_vamp_prior_is_the_mixture_over_pseudo_inputs_and_components():
    torch.manual_seed(1)
    owner = _Owner()
    z = torch.randn(7, 2)
    q = owner.encoder(owner.prior.pseudo_inputs)
    loc, scale = q.component_loc.reshape(10, 2), q.component_scale.reshape(10, 2)
    expected = torch.logsumexp(Normal(loc, scale).log_prob(z[:, None]).sum(-1), 1) - math.log(10)
    torch.testing.assert_close(owner.prior.log_prob(z), expected)
    assert owner.prior.sample(11).shape == (11, 2)
    # the encoder is registered once, and a copy encodes with its own copy
    assert not any(k.startswith("prior.encoder") for k in owner.state_dict())
    twin = copy.deepcopy(owner)
    with torch.no_grad():
        twin.encoder.loc.bias.add_(3.0)
    assert not torch.allclose(twin.prior.log_prob(z), owner.prior.log_prob(z))
    torch.testing.assert_close(owner.prior.log_prob(z), expected)


def test_mixture_of_gaussians_prior_matches_torch():
    torch.manual_seed(3)
    prior = MixtureOfGaussiansPrior(n_latent=3, n_prior_components=4)
    with torch.no_grad():
        prior.logits.normal_()
        prior.log_scale.normal_(0, 0.3)
    z = torch.randn(6, 3)
    reference = MixtureSameFamily(
        Categorical(logits=prior.logits),
        Independent(Normal(prior.loc, prior.log_scale.exp()), 1),
    )
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    assert prior.sample(9).shape == (9, 3)
    torch.testing.assert_close(
        StandardNormalPrior(3).log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1)
    )


def test_bad_recipes_are_named():
    with pytest.raises(ValueError, match="prior must be one of"):
        validate_prior("gaussian")
    with pytest.raises(ValueError, match="n_prior_components must be an integer >= 1"):
        validate_prior("vamp", 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        validate_flow(2, 1)
    with pytest.raises(ValueError, match="flow_steps must be an integer >= 0"):
        validate_flow(-1, 10)
    with pytest.raises(ValueError, match=r"pseudo_inputs must have shape \[K, n_in\]"):
        VampPrior(torch.zeros(3), encode=lambda u: u)


def test_image_models_use_the_shared_prior_and_flow():
    vamp = build_model("vampprior", 2, n_latent=4, n_hidden=8, n_pseudo_inputs=3)
    assert isinstance(vamp.prior, VampPrior)
    assert not any(k.startswith("prior.encoder") for k in vamp.state_dict())
    composite = build_model(
        "composite", 2, n_latent=4, n_hidden=8, n_pseudo_inputs=3, pixelcnn_channels=4,
        pixelcnn_layers=2,
    )  # fmt: skip
    assert isinstance(composite.flow, LatentFlow) and len(composite.flow.steps) == 2
    assert isinstance(composite.prior_z2, VampPrior)
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    terms: DrawTerms = composite.draw_terms(x)
    assert torch.isfinite(bound(terms)).all()
