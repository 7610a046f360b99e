"""The stacked encoder computes what S separately built scvi-tools encoders compute."""

from __future__ import annotations

import pytest
import torch
from scvi.nn import Encoder

from scmixvae.mixture import StackedEncoder

N_COMPONENTS, N_INPUT, N_LATENT, N_CATS = 3, 30, 4, 3


def _pair(n_layers, use_batch_norm, use_layer_norm, dropout_rate=0.0):
    separate = [
        Encoder(
            N_INPUT,
            N_LATENT,
            n_cat_list=[N_CATS],
            n_layers=n_layers,
            n_hidden=16,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            inject_covariates=True,
            return_dist=True,
        ).double()
        for _ in range(N_COMPONENTS)
    ]
    stacked = StackedEncoder(
        N_COMPONENTS,
        N_INPUT,
        N_LATENT,
        n_cat_list=[N_CATS],
        n_layers=n_layers,
        n_hidden=16,
        dropout_rate=dropout_rate,
        use_batch_norm=use_batch_norm,
        use_layer_norm=use_layer_norm,
        inject_covariates=True,
    ).double()
    for k, enc in enumerate(separate):
        stacked.load_component_(k, enc)
    return separate, stacked


@pytest.mark.parametrize(
    ("n_layers", "use_batch_norm", "use_layer_norm"),
    [(1, True, False), (2, True, False), (2, False, True), (3, True, True)],
)
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_gradients_match_separate_encoders(
    n_layers, use_batch_norm, use_layer_norm, training
):
    separate, stacked = _pair(n_layers, use_batch_norm, use_layer_norm)
    for m in [*separate, stacked]:
        m.train(training)
    x = torch.rand(12, N_INPUT, dtype=torch.float64)
    cat = torch.randint(N_CATS, (12, 1))
    qz = stacked(x, cat)
    assert qz.component_loc.shape == (N_COMPONENTS, 12, N_LATENT)
    target = torch.randn(N_COMPONENTS, 12, N_LATENT, dtype=torch.float64)
    (qz.component_loc * target).sum().backward(retain_graph=True)
    (qz.component_scale.log() * target).sum().backward()

    first_layer_grads = []
    for k, enc in enumerate(separate):
        dist, _ = enc(x, cat)
        assert torch.allclose(dist.loc, qz.component_loc[k], atol=1e-10)
        assert torch.allclose(dist.scale, qz.component_scale[k], atol=1e-10)
        ((dist.loc * target[k]).sum() + (dist.scale.log() * target[k]).sum()).backward()
        first = enc.encoder.fc_layers[0][0]
        first_layer_grads.append(first.weight.grad)
        assert torch.allclose(stacked.encoder.layers[0].linear.weight.grad[k], first.weight.grad)
        assert torch.allclose(stacked.mean_encoder.weight.grad[k], enc.mean_encoder.weight.grad)
        assert torch.allclose(stacked.var_encoder.bias.grad[k], enc.var_encoder.bias.grad)
        if use_batch_norm and training:  # running statistics moved the same way
            bn = enc.encoder.fc_layers[0][1]
            assert torch.allclose(
                stacked.encoder.layers[0].batch_norm.running_mean[k], bn.running_mean
            )
            assert torch.allclose(
                stacked.encoder.layers[0].batch_norm.running_var[k], bn.running_var
            )
    assert not torch.allclose(first_layer_grads[0], first_layer_grads[1])  # a real comparison


def test_dropout_masks_are_independent_per_component():
    _, stacked = _pair(1, False, False, dropout_rate=0.5)
    # make every component the same network: only dropout can make them differ
    for _name, p in stacked.named_parameters():
        p.data[:] = p.data[:1]
    x = torch.rand(8, N_INPUT, dtype=torch.float64)
    cat = torch.zeros(8, 1, dtype=torch.long)
    stacked.eval()
    qz = stacked(x, cat)
    assert torch.allclose(qz.component_loc[0], qz.component_loc[1])
    stacked.train()
    qz = stacked(x, cat)
    assert not torch.allclose(qz.component_loc[0], qz.component_loc[1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_components"):
        StackedEncoder(0, 5, 2)
    _, stacked = _pair(1, True, False)
    wrong = Encoder(N_INPUT + 1, N_LATENT, n_cat_list=[N_CATS], n_hidden=16)
    with pytest.raises(ValueError, match="shape differs"):
        stacked.load_component_(0, wrong)
    with pytest.raises(ValueError, match="categorical"):
        stacked(torch.rand(4, N_INPUT, dtype=torch.float64))
