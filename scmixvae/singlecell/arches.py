"""scArches surgery for the mixture's encoders: what a query may update, and what stays frozen.

scvi-tools' :meth:`~scvi.model.base.ArchesMixin.load_query_data` freezes a reference model
for mapping a query: only the weights of new batch categories in the first layer of every
:class:`scvi.nn.FCLayers` (and in deeper layers that receive the covariates) are trained,
batch-norm statistics are frozen, and the library encoder is free. It recognises its own
layers by name, so the mixture encoders' own layers (stacked or coded, which scvi-tools does
not know) get the same treatment here.
"""

from __future__ import annotations

import torch
from torch import nn

from scmixvae.mixture import StackedBatchNorm1d, StackedEncoder

from .encoders import SharedTrunkEncoder


def _keep_last_columns(n_columns: int):
    """Gradient hook that keeps the last ``n_columns`` input columns (the covariates)."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        kept = torch.zeros_like(grad)
        if n_columns:
            kept[..., -n_columns:] = grad[..., -n_columns:]
        return kept

    return hook


def _covariate_columns_only(weight: nn.Parameter, bias: nn.Parameter | None, n_cat: int):
    """Train only the categorical columns of ``weight`` (as scvi-tools' online update hooks)."""
    weight.requires_grad_(True)
    weight.register_hook(_keep_last_columns(n_cat))
    if bias is not None:
        bias.requires_grad_(False)


def freeze_mixture_encoder_for_query(
    encoder: nn.Module,
    freeze_expression: bool = True,
    freeze_batchnorm_encoder: bool = True,
) -> None:
    """Apply scArches' freezing rules to the layers of a mixture encoder scvi-tools does not know.

    A :class:`~scmixvae.singlecell.encoders.SharedTrunkEncoder`'s trunk is an
    :class:`scvi.nn.FCLayers` that scvi-tools has already set up; its coded layer (the first
    layer with scVI's default ``n_layers=1``), and every layer of a
    :class:`~scmixvae.mixture.StackedEncoder`, are set up here.

    Parameters
    ----------
    encoder
        The module's ``z_encoder``.
    freeze_expression
        Keep the first layer's gene weights fixed (scvi-tools' default); ``False`` trains the
        whole first layer.
    freeze_batchnorm_encoder
        Keep batch normalisation (statistics and affine weights) fixed.
    """
    shared = isinstance(encoder, SharedTrunkEncoder)
    trunk = set(encoder.trunk.parameters()) if shared and encoder.trunk is not None else set()
    for param in encoder.parameters():
        if param not in trunk:
            param.requires_grad_(False)
    if isinstance(encoder, StackedEncoder):
        fc = encoder.encoder
        for index, layer in enumerate(fc.layers):
            if index == 0 and not freeze_expression:
                for param in layer.linear.parameters():
                    param.requires_grad_(True)
            elif fc._inject_into_layer(index):
                _covariate_columns_only(layer.linear.weight, layer.linear.bias, sum(fc.n_cat_list))
    elif shared and encoder.uses_head:  # scmixvae 0.1.0's layout
        if encoder.inject_covariates:
            linear = encoder.head.linear
            _covariate_columns_only(linear.weight, linear.bias, sum(encoder.n_cat_list))
    elif shared:
        coded = encoder.coded_layer
        if encoder.trunk is None and not freeze_expression:  # the coded layer is the first
            for param in coded.linear.parameters():
                param.requires_grad_(True)
        elif encoder.coded_takes_covariates:
            n_cat = sum(encoder.n_cat_list)
            _covariate_columns_only(coded.linear.weight, coded.linear.bias, n_cat)
        if coded.batch_norm is not None:  # scvi-tools has frozen its running statistics
            for param in coded.batch_norm.parameters():
                param.requires_grad_(not freeze_batchnorm_encoder)
    for module in encoder.modules():
        if isinstance(module, StackedBatchNorm1d):
            module.weight.requires_grad_(not freeze_batchnorm_encoder)
            module.bias.requires_grad_(not freeze_batchnorm_encoder)
            if freeze_batchnorm_encoder:  # running statistics stay the reference's
                module.momentum = 0.0
