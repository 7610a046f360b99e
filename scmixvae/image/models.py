"""Image VAEs with a mixture of S encoders: vanilla, VampPrior, hierarchical, composite.

Every model exposes :meth:`MixtureImageVAE.draw_terms`, the log densities at ``L`` draws from
each of ``A`` components per image (:class:`~scmixvae.mixture.DrawTerms`), which
:mod:`scmixvae.mixture` turns into MISELBO, the ensemble ELBO and the importance-sampled
likelihood, so no model re-implements a bound. The ``S`` encoders are either separate networks
stacked into one module, or one amortized network whose head is conditioned on each
component's code (``shared_encoder=True``, Hotti et al., 2024).

Architectures follow the VampPrior code of Tomczak & Welling (2018) used by the method's
experiments: gated dense layers of 300 units, 40-dimensional latents, hardtanh-clamped
log-variances, Bernoulli pixels.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from scmixvae.mixture import (
    DrawTerms,
    LatentFlow,
    MixtureNormal,
    StandardNormalPrior,
    VampPrior,
    mixture_densities,
    sample_components,
)

from .layers import (
    CodedGatedDense,
    CodedGaussianHead,
    GatedDense,
    GaussianHead,
    PixelCNNDecoder,
    StackedGatedDense,
    StackedGaussianHead,
)

Architecture = Literal["vanilla", "vampprior", "hierarchical", "composite"]
ARCHITECTURES = ("vanilla", "vampprior", "hierarchical", "composite")
N_PIXELS = 784
MAX_SEPARATE_COMPONENTS = 128
MAX_SHARED_COMPONENTS = 1024


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of the Bernoulli log-likelihood; broadcasts ``x`` against ``logits``."""
    x = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def check_images(x: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is a batch of flattened 28x28 images in ``[0, 1]``."""
    if x.dim() != 2 or x.shape[1] != N_PIXELS:
        raise ValueError(
            f"images must have shape [batch, {N_PIXELS}] (flattened 28x28), got {tuple(x.shape)}."
        )
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("image values must be finite and in [0, 1] (binarised or intensities).")


class StackedGaussianEncoder(nn.Module):
    """``S`` encoders ``x -> 300 -> 300 -> (loc, scale)`` of gated dense layers, one module."""

    def __init__(self, n_components: int, n_in: int, n_latent: int, n_hidden: int = 300):
        super().__init__()
        self.hidden = nn.Sequential(
            StackedGatedDense(n_components, n_in, n_hidden),
            StackedGatedDense(n_components, n_hidden, n_hidden),
        )
        self.head = StackedGaussianHead(n_components, n_hidden, n_latent)

    def forward(self, x: torch.Tensor) -> MixtureNormal:
        return MixtureNormal(*self.head(self.hidden(x)))


class SharedGaussianEncoder(nn.Module):
    """``S`` encoders amortized over one network (Hotti et al., 2024).

    The first gated dense layer ``x -> 300`` runs once per image; the second, of ``[h, e_s]``,
    and the Gaussian head are conditioned on each component's code ``e_s``. With ``S = 1`` this
    is the vanilla encoder ``x -> 300 -> 300 -> (loc, scale)`` layer for layer. A component
    costs ``2 * n_head_hidden + 2 * n_latent`` parameters (its code columns), and a step's extra
    work grows with ``S * n_head_hidden * n_latent``.

    Parameters
    ----------
    n_components
        ``S``.
    n_in, n_latent, n_hidden
        Input, latent and first-layer widths.
    n_head_hidden
        Width of the coded layer (default: ``n_hidden``). A narrower one is cheaper at large
        ``S`` but may learn slower: the earlier encoder, two shared layers and then a 64-unit
        coded one, cost 3.7 nats of test NLL at ``S = 1`` after 10 MNIST epochs
        (``benchmarks/results/image_vanilla_mnist_shared_ablation.md``).
    """

    def __init__(
        self,
        n_components: int,
        n_in: int,
        n_latent: int,
        n_hidden: int = 300,
        n_head_hidden: int | None = None,
    ):
        super().__init__()
        n_head_hidden = n_hidden if n_head_hidden is None else n_head_hidden
        self.trunk = GatedDense(n_in, n_hidden)
        self.hidden = CodedGatedDense(n_components, n_hidden, n_head_hidden)
        self.head = CodedGaussianHead(n_components, n_head_hidden, n_latent)

    def forward(self, x: torch.Tensor) -> MixtureNormal:
        return MixtureNormal(*self.head(self.hidden(self.trunk(x), per_component=False)))


def gaussian_encoder(
    n_components: int, n_in: int, n_latent: int, n_hidden: int, shared: bool
) -> nn.Module:
    """Separate (stacked) or amortized (``shared``) encoders ``x -> MixtureNormal [S, B, D]``."""
    cls = SharedGaussianEncoder if shared else StackedGaussianEncoder
    return cls(n_components, n_in, n_latent, n_hidden)


class DenseDecoder(nn.Module):
    """``code -> 300 -> 300 -> 784`` Bernoulli logits."""

    def __init__(self, n_code: int, n_hidden: int = 300):
        super().__init__()
        self.net = nn.Sequential(
            GatedDense(n_code, n_hidden),
            GatedDense(n_hidden, n_hidden),
            nn.Linear(n_hidden, N_PIXELS),
        )

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


def vamp_prior(encoder: nn.Module, n_pseudo_inputs: int) -> VampPrior:
    """The VampPrior of :mod:`scmixvae.mixture.priors` over images: pseudo-inputs start near
    blank pixels (as in the VampPrior code) and are clamped to ``[0, 1]`` before encoding."""
    return VampPrior(
        0.05 + 0.01 * torch.randn(n_pseudo_inputs, N_PIXELS),
        encode=ClampedPixelEncoder(encoder),
    )


class ClampedPixelEncoder:
    """``encode(u) = encoder(hardtanh(u, 0, 1))``: pseudo-inputs as pixel intensities.

    A plain object holding the encoder, so the encoder is registered once (by the model) and a
    deep copy of the model copies it with the model.
    """

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder

    def __call__(self, pseudo_inputs: torch.Tensor) -> MixtureNormal:
        return self.encoder(F.hardtanh(pseudo_inputs, 0.0, 1.0))


class MixtureImageVAE(nn.Module):
    """Base class: ``S`` encoders, one decoder, uniform mixture weights."""

    n_components: int

    def draw_terms(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        n_sampled_components: int | None = None,
        with_sub_mixture: bool = False,
    ) -> DrawTerms:
        """Log densities at ``n_samples`` draws from each of ``A`` components per image.

        Parameters
        ----------
        x
            ``[B, 784]`` binary images.
        n_samples
            Draws per drawn component ``L``.
        n_sampled_components
            ``A``: ``None`` for every component (stratified), else ``A`` distinct components
            drawn uniformly for every image.
        with_sub_mixture
            Also compute the drawn sub-mixture's density (the ``"some_to_some"`` objective).

        Returns
        -------
        :class:`~scmixvae.mixture.DrawTerms` with ``[L, A, B]`` terms.
        """
        raise NotImplementedError

    def _decode(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Bernoulli log-likelihood of ``x [B, 784]`` for codes ``[..., B, C]``, ``[..., B]``."""
        lead = code.shape[:-1]
        flat = code.reshape(-1, code.shape[-1])
        x_rep = x.expand(*lead[:-1], *x.shape).reshape(-1, x.shape[-1])
        logits = self.decoder(x_rep, flat)
        return bernoulli_log_prob(logits, x_rep).view(lead)


class MixtureVAE(MixtureImageVAE):
    """One latent layer: the vanilla VAE (``prior="standard"``) or VampPrior VAE.

    Parameters
    ----------
    n_components
        Number of encoders ``S``.
    n_latent, n_hidden
        Latent size (40) and hidden width (300).
    prior
        ``"standard"`` or ``"vampprior"``.
    n_pseudo_inputs
        VampPrior's ``K``.
    shared_encoder
        Amortize the ``S`` encoders (:class:`SharedGaussianEncoder`).
    """

    def __init__(
        self,
        n_components: int,
        n_latent: int = 40,
        n_hidden: int = 300,
        prior: Literal["standard", "vampprior"] = "standard",
        n_pseudo_inputs: int = 500,
        shared_encoder: bool = False,
    ):
        super().__init__()
        self.n_components = n_components
        self.encoder = gaussian_encoder(
            n_components, N_PIXELS, n_latent, n_hidden, shared=shared_encoder
        )
        self.prior = (
            vamp_prior(self.encoder, n_pseudo_inputs)
            if prior == "vampprior"
            else StandardNormalPrior(n_latent)
        )
        self.decoder = DenseDecoder(n_latent, n_hidden)

    def draw_terms(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        n_sampled_components: int | None = None,
        with_sub_mixture: bool = False,
    ) -> DrawTerms:
        qz = self.encoder(x)
        component = sample_components(
            self.n_components, n_sampled_components, x.shape[0], device=x.device
        )
        z = qz.rsample_components(component, n_samples)
        return qz.draw_terms(
            z,
            component,
            log_px_z=self._decode(x, z),
            log_pz=self.prior.log_prob(z),
            with_sub_mixture=with_sub_mixture,
        )

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """``n`` images drawn from the model (pixel probabilities), ``[n, 784]``."""
        return torch.sigmoid(self.decoder(None, self.prior.sample(n)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities decoded from each component's posterior mean, ``[S, B, 784]``."""
        check_images(x)
        loc = self.encoder(x).component_loc
        return torch.sigmoid(self.decoder(None, loc))


class HierarchicalMixtureVAE(MixtureImageVAE):
    r"""Two latent layers ``z2 -> z1 -> x`` with a VampPrior on ``z2``.

    The posterior of component ``s`` is :math:`q_s(z_2 \mid x)\, q_s(z_1 \mid x, z_2)`; the
    mixture density of a draw needs every component's :math:`q_j(z_1 \mid x, z_2)` at the
    drawing component's ``z2``, which the stacked networks give in one pass. Optionally an
    inverse autoregressive flow shared by all components transforms ``z1`` (the same map for
    every component, so the mixture density is the base mixture density minus the flow's
    log-determinant), and a PixelCNN replaces the dense decoder: that is the composite model.

    Parameters
    ----------
    n_components
        Number of encoders ``S``.
    n_latent, n_hidden
        Size of each latent layer (40) and hidden width (300).
    n_pseudo_inputs
        VampPrior's ``K``.
    flow_steps
        Steps of the latent flow on ``z1`` (:class:`~scmixvae.mixture.LatentFlow`; 0: no
        flow).
    decoder
        ``"dense"`` or ``"pixelcnn"``.
    pixelcnn_channels, pixelcnn_layers
        PixelCNN size.
    shared_encoder
        Amortize the components: the input layers of ``q(z2 | x)`` and ``q(z1 | x, z2)`` are
        shared, and their last hidden layer and head are conditioned on each component's code
        (with ``S = 1``, the separate-encoder architecture).
    """

    def __init__(
        self,
        n_components: int,
        n_latent: int = 40,
        n_hidden: int = 300,
        n_pseudo_inputs: int = 500,
        flow_steps: int = 0,
        decoder: Literal["dense", "pixelcnn"] = "dense",
        pixelcnn_channels: int = 32,
        pixelcnn_layers: int = 4,
        shared_encoder: bool = False,
    ):
        super().__init__()
        self.n_components = n_components
        self.n_latent = n_latent
        self.shared_encoder = shared_encoder
        self.z2_encoder = gaussian_encoder(
            n_components, N_PIXELS, n_latent, n_hidden, shared=shared_encoder
        )
        if shared_encoder:  # shared input layers; the joint layer and the head are coded
            self.z1_from_x = GatedDense(N_PIXELS, n_hidden)
            self.z1_from_z2 = GatedDense(n_latent, n_hidden)
            self.z1_joint = CodedGatedDense(n_components, 2 * n_hidden, n_hidden)
            self.z1_head = CodedGaussianHead(n_components, n_hidden, n_latent)
        else:
            self.z1_from_x = StackedGatedDense(n_components, N_PIXELS, n_hidden)
            self.z1_from_z2 = StackedGatedDense(n_components, n_latent, n_hidden)
            self.z1_joint = StackedGatedDense(n_components, 2 * n_hidden, n_hidden)
            self.z1_head = StackedGaussianHead(n_components, n_hidden, n_latent)
        self.prior_z2 = vamp_prior(self.z2_encoder, n_pseudo_inputs)
        self.prior_z1 = nn.Sequential(
            GatedDense(n_latent, n_hidden), GatedDense(n_hidden, n_hidden)
        )
        self.prior_z1_head = GaussianHead(n_hidden, n_latent)
        self.flow = LatentFlow(n_latent, flow_steps) if flow_steps > 0 else None
        self.decoder = (
            PixelCNNDecoder(2 * n_latent, pixelcnn_channels, pixelcnn_layers)
            if decoder == "pixelcnn"
            else DenseDecoder(2 * n_latent, n_hidden)
        )

    def _z1_posteriors(self, x: torch.Tensor, z2: torch.Tensor):
        """Every component's ``q_j(z1 | x, z2)`` at every ``z2`` draw.

        ``z2 [L, A, B, D]`` -> loc, scale ``[S_j, L, A, B, D]``.
        """
        n_draws = math.prod(z2.shape[:-2])
        h_x = self.z1_from_x(x)  # shared by all draws of an image
        h_z2 = self.z1_from_z2(z2.reshape(-1, z2.shape[-1]))
        h_x = h_x.expand(n_draws, *h_x.shape).reshape(h_z2.shape)
        joint = torch.cat([h_x, h_z2], dim=-1)  # [N, H] shared, or [N, S_j, H] stacked
        if self.shared_encoder:
            hidden = self.z1_joint(joint, per_component=False)
        else:
            hidden = self.z1_joint(joint)
        loc, scale = self.z1_head(hidden)
        shape = (self.n_components, *z2.shape)
        return loc.reshape(shape), scale.reshape(shape)

    def component_log_densities(
        self, x: torch.Tensor, z2: torch.Tensor, z1_base: torch.Tensor
    ) -> torch.Tensor:
        """``log q_j(z2 | x) + log q_j(z1 | x, z2)`` of every component ``j`` at given draws.

        ``z2`` and ``z1_base`` (``z1`` before the flow) are ``[L, A, B, D]``; returns
        ``[S_j, L, A, B]``.
        """
        loc1, scale1 = self._z1_posteriors(x, z2)
        return self._joint_log_densities(self.z2_encoder(x), loc1, scale1, z2, z1_base)

    @staticmethod
    def _joint_log_densities(q_z2, loc1, scale1, z2, z1_base) -> torch.Tensor:
        log_q1 = Normal(loc1, scale1).log_prob(z1_base).sum(-1)  # [S_j, L, S, B]
        return log_q1 + q_z2.component_log_prob(z2).movedim(-2, 0)

    def draw_terms(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        n_sampled_components: int | None = None,
        with_sub_mixture: bool = False,
    ) -> DrawTerms:
        q_z2 = self.z2_encoder(x)
        component = sample_components(
            self.n_components, n_sampled_components, x.shape[0], device=x.device
        )
        z2 = q_z2.rsample_components(component, n_samples)  # [L, A, B, D]
        loc1, scale1 = self._z1_posteriors(x, z2)  # [S_j, L, A, B, D]
        # the drawing component's q(z1 | x, z2) at its own z2 draw
        own = component.view(1, 1, *component.shape, 1).expand(1, *z2.shape)
        loc1_own, scale1_own = loc1.gather(0, own)[0], scale1.gather(0, own)[0]
        z1 = loc1_own + scale1_own * torch.randn_like(loc1_own)

        log_q_components = self._joint_log_densities(q_z2, loc1, scale1, z2, z1).movedim(0, -2)
        if self.flow is not None:
            # one flow for every component: each density loses the same log-determinant
            z1, log_det = self.flow(z1)
            log_q_components = log_q_components - log_det.unsqueeze(-2)
        log_q_mix, log_q_own, log_q_sub = mixture_densities(
            log_q_components, component, with_sub_mixture
        )
        p_z1 = Normal(*self.prior_z1_head(self.prior_z1(z2)))
        log_pz = p_z1.log_prob(z1).sum(-1) + self.prior_z2.log_prob(z2)
        return DrawTerms(
            log_q_mix=log_q_mix,
            log_q_own=log_q_own,
            component=component,
            n_components=self.n_components,
            log_px_z=self._decode(x, torch.cat([z1, z2], dim=-1)),
            log_pz=log_pz,
            log_q_sub=log_q_sub,
        )

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """``n`` images drawn from the model (pixel probabilities), ``[n, 784]``."""
        z2 = self.prior_z2.sample(n)
        z1 = Normal(*self.prior_z1_head(self.prior_z1(z2))).sample()
        code = torch.cat([z1, z2], dim=-1)
        if isinstance(self.decoder, DenseDecoder):
            return torch.sigmoid(self.decoder(None, code))
        x = torch.zeros(n, N_PIXELS, device=code.device)
        for i in range(N_PIXELS):  # autoregressive: one pixel at a time
            x[:, i] = torch.bernoulli(torch.sigmoid(self.decoder(x, code)[:, i]))
        return x


def build_model(
    architecture: Architecture, n_components: int, shared_encoder: bool = False, **kwargs
) -> MixtureImageVAE:
    """The model of an architecture name.

    ``vanilla``: gated dense VAE, N(0, I) prior. ``vampprior``: the same with a VampPrior.
    ``hierarchical``: two latent layers, VampPrior on the top one. ``composite``: hierarchical
    with a shared IAF on the posterior and a PixelCNN decoder. ``shared_encoder`` amortizes the
    ``S`` encoders (every architecture).
    """
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}.")
    cap = MAX_SHARED_COMPONENTS if shared_encoder else MAX_SEPARATE_COMPONENTS
    if n_components > cap:
        raise ValueError(
            f"n_components={n_components} is beyond the supported {cap} for "
            f"{'a shared' if shared_encoder else 'separate'} encoder(s)"
            + ("." if shared_encoder else "; use shared_encoder=True for larger mixtures.")
        )
    kwargs["shared_encoder"] = shared_encoder
    if architecture == "vanilla":
        return MixtureVAE(n_components, prior="standard", **kwargs)
    if architecture == "vampprior":
        return MixtureVAE(n_components, prior="vampprior", **kwargs)
    if architecture == "hierarchical":
        return HierarchicalMixtureVAE(n_components, **kwargs)
    if architecture == "composite":
        kwargs.setdefault("flow_steps", 2)
        kwargs.setdefault("decoder", "pixelcnn")
        return HierarchicalMixtureVAE(n_components, **kwargs)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
