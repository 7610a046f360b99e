"""Image mixture VAEs: every architecture on real MNIST, the maths of each part, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from scmixvae.cli import main
from scmixvae.image.data import load_splits
from scmixvae.image.layers import PixelCNNDecoder
from scmixvae.image.models import ARCHITECTURES, build_model, check_images
from scmixvae.image.training import evaluate_model
from scmixvae.mixture import bound, gaussian_log_prob_matrix

STACKED_PREFIXES = (
    "encoder.",
    "z2_encoder.",
    "z1_from_x.",
    "z1_from_z2.",
    "z1_joint.",
    "z1_head.",
)


@pytest.fixture(scope="module")
def mnist_batch(data_dir):
    splits = load_splits("mnist", data_dir=data_dir, subset=64)
    assert splits.train.shape == (64, 784) and splits.dynamic
    assert set(torch.from_numpy(splits.test).unique().tolist()) <= {0.0, 1.0}
    return torch.bernoulli(torch.from_numpy(splits.train[:12]))


def _small(architecture):
    kwargs = {"n_hidden": 32, "n_latent": 6}
    if architecture in ("vampprior", "hierarchical", "composite"):
        kwargs["n_pseudo_inputs"] = 10
    if architecture == "composite":
        kwargs.update(pixelcnn_channels=8, pixelcnn_layers=2)
    return kwargs


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(
    ("n_components", "shared_encoder", "n_sampled"),
    [(1, False, None), (3, False, None), (3, False, 2), (1, True, None), (6, True, 2)],
)
def test_every_architecture_gives_finite_terms_and_gradients(
    mnist_batch, architecture, n_components, shared_encoder, n_sampled
):
    model = build_model(architecture, n_components, shared_encoder, **_small(architecture))
    terms = model.draw_terms(mnist_batch, n_samples=2, n_sampled_components=n_sampled)
    n_drawn = n_sampled or n_components
    for value in (terms.log_px_z, terms.log_pz, terms.log_q_mix, terms.log_q_own):
        assert value.shape == (2, n_drawn, 12)
        assert torch.isfinite(value).all()
    # a mixture density is at least its own component's share
    assert (terms.log_q_mix >= terms.log_q_own - math.log(n_components) - 1e-4).all()
    if n_components == 1:
        torch.testing.assert_close(terms.log_q_mix, terms.log_q_own)
    loss = -bound(terms, "miselbo").mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _component_models(model, architecture):
    """S single-component models holding component j's encoder weights and the shared rest."""
    singles = []
    for j in range(model.n_components):
        single = build_model(architecture, 1, **_small(architecture))
        state = {
            k: v[j : j + 1] if k.startswith(STACKED_PREFIXES) or ".encoder." in k else v
            for k, v in model.state_dict().items()
        }
        single.load_state_dict(state)
        singles.append(single)
    return singles


@pytest.mark.parametrize("architecture", ["vanilla", "hierarchical"])
@pytest.mark.parametrize("shared_encoder", [False, True])
def test_all_sampled_components_is_the_stratified_bound(mnist_batch, architecture, shared_encoder):
    model = build_model(architecture, 4, shared_encoder, **_small(architecture))
    torch.manual_seed(5)
    stratified = model.draw_terms(mnist_batch, 2)
    torch.manual_seed(5)
    every = model.draw_terms(mnist_batch, 2, n_sampled_components=4)
    for objective in ("miselbo", "ensemble"):
        assert torch.equal(bound(stratified, objective, 0.4), bound(every, objective, 0.4))
    if architecture == "vanilla":  # the stratified MISELBO written out on the same draws
        torch.manual_seed(5)
        qz = model.encoder(mnist_batch)
        z = qz.rsample(2)
        log_w = model._decode(mnist_batch, z) + 0.4 * (
            Normal(0, 1).log_prob(z).sum(-1) - qz.log_prob(z)
        )
        torch.testing.assert_close(bound(stratified, "miselbo", 0.4), log_w.mean((0, 1)))


def test_shared_encoder_with_one_component_is_the_vanilla_encoder(mnist_batch):
    # same layers as the separate encoder: copying its weights (codes at zero) gives its output
    stacked = build_model("vanilla", 1, **_small("vanilla")).encoder
    shared = build_model("vanilla", 1, True, **_small("vanilla")).encoder
    pairs = [
        (shared.trunk.linear, stacked.hidden[0].linear),
        (shared.hidden.linear, stacked.hidden[1].linear),
        (shared.head.loc, stacked.head.loc),
        (shared.head.log_var, stacked.head.log_var),
    ]
    with torch.no_grad():
        for target, source in pairs:
            linear = getattr(target, "linear", target)
            linear.weight.copy_(source.weight[0])
            linear.bias.copy_(source.bias[0])
            if hasattr(target, "code"):
                target.code.zero_()
    expected, got = stacked(mnist_batch), shared(mnist_batch)
    torch.testing.assert_close(got.component_loc, expected.component_loc)
    torch.testing.assert_close(got.component_scale, expected.component_scale)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_encoder_adds_only_component_codes_at_one_component(architecture):
    stacked = build_model(architecture, 1, **_small(architecture))
    shared = build_model(architecture, 1, True, **_small(architecture))
    codes = sum(p.numel() for name, p in shared.named_parameters() if name.endswith(".code"))
    assert codes > 0
    n_stacked = sum(p.numel() for p in stacked.parameters())
    assert sum(p.numel() for p in shared.parameters()) == n_stacked + codes


def test_image_shared_components_cost_under_one_percent_of_the_trunk():
    sizes = {s: sum(p.numel() for p in build_model("vanilla", s, True).parameters())
             for s in (1, 2, 200, 201)}  # fmt: skip
    trunk = sum(p.numel() for p in build_model("vanilla", 1, True).encoder.trunk.parameters())
    assert 0 < sizes[2] - sizes[1] <= 0.01 * trunk
    assert sizes[201] - sizes[200] == sizes[2] - sizes[1]
    with pytest.raises(ValueError, match="shared_encoder=True"):
        build_model("vanilla", 200)


def test_vanilla_mixture_density_is_the_mean_of_its_components(mnist_batch):
    model = build_model("vanilla", 3, **_small("vanilla"))
    singles = _component_models(model, "vanilla")
    qz = model.encoder(mnist_batch)
    z = qz.rsample(4)
    each = torch.stack([s.encoder(mnist_batch).log_prob(z) for s in singles])
    torch.testing.assert_close(qz.log_prob(z), torch.logsumexp(each, 0) - math.log(3))


def test_hierarchical_mixture_density_by_brute_force(mnist_batch):
    model = build_model("hierarchical", 2, **_small("hierarchical"))
    singles = _component_models(model, "hierarchical")
    z2 = torch.randn(3, 2, 12, 6)
    z1 = torch.randn(3, 2, 12, 6)
    joint = model.component_log_densities(mnist_batch, z2, z1)  # [S_j, L, S, B]
    for j, single in enumerate(singles):
        alone = single.component_log_densities(mnist_batch, z2, z1)[0]
        torch.testing.assert_close(joint[j], alone, rtol=1e-5, atol=1e-4)


def test_single_component_is_the_standard_vae(mnist_batch):
    model = build_model("vanilla", 1, **_small("vanilla"))
    torch.manual_seed(4)
    terms = model.draw_terms(mnist_batch, n_samples=3)
    torch.manual_seed(4)
    q = model.encoder(mnist_batch)
    loc, scale = q.component_loc[0], q.component_scale[0]
    z = loc + scale * torch.randn(3, 1, *loc.shape)[:, 0]
    logits = model.decoder(None, z)
    log_px_z = torch.distributions.Bernoulli(logits=logits).log_prob(mnist_batch).sum(-1)
    elbo = (
        log_px_z + Normal(0, 1).log_prob(z).sum(-1) - Normal(loc, scale).log_prob(z).sum(-1)
    ).mean(0)
    torch.testing.assert_close(bound(terms, "miselbo"), elbo, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(bound(terms, "ensemble"), elbo, rtol=1e-5, atol=1e-3)


def test_importance_sampled_nll_is_below_the_negative_bound(mnist_batch):
    model = build_model("vampprior", 2, **_small("vampprior"))
    result = evaluate_model(model, mnist_batch, n_samples_per_component=200, batch_size=6)
    # log p(x) >= bound, so NLL <= -bound; the paper code's estimator is never the tighter one
    assert result["nll_mixture"] <= result["negative_bound"]
    assert result["nll_mixture"] <= result["nll_per_component"]
    assert 0 <= result["jsd"] <= math.log(2)
    assert sum(result["component_usage"]) == pytest.approx(1.0)
    again = evaluate_model(model, mnist_batch, n_samples_per_component=200, batch_size=6)
    assert again["nll_mixture"] == result["nll_mixture"]  # deterministic given the seed


def test_pixelcnn_is_causal():
    torch.manual_seed(3)
    decoder = PixelCNNDecoder(n_code=4, n_channels=8, n_layers=3).double()
    x = torch.bernoulli(torch.full((784,), 0.5, dtype=torch.float64))
    code = torch.randn(1, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: decoder(v[None], code)[0], x)
    # output i may depend on pixels j < i only (raster order)
    assert torch.count_nonzero(jacobian.triu()) == 0
    assert torch.count_nonzero(jacobian.tril(-1)) > 0


def test_gaussian_log_prob_matrix_matches_broadcasting():
    z = torch.randn(7, 3, dtype=torch.float64)
    loc = torch.randn(5, 3, dtype=torch.float64)
    scale = torch.rand(5, 3, dtype=torch.float64) + 0.1
    expected = Normal(loc, scale).log_prob(z[:, None]).sum(-1)
    torch.testing.assert_close(gaussian_log_prob_matrix(z, loc, scale), expected)


def test_bad_images_and_arguments_are_named():
    with pytest.raises(ValueError, match="784"):
        check_images(torch.rand(4, 28, 28))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_images(torch.rand(4, 784) * 255)
    with pytest.raises(ValueError, match="architecture"):
        build_model("resnet", 2)
    with pytest.raises(ValueError, match="n_components"):
        build_model("vanilla", 0)


def test_cli_trains_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    train_args = ["image", "train", "--arch", "vanilla", "--components", "2", "--epochs", "1",
                  "--subset", "200", "--out", str(run), "--no-progress-bar"]  # fmt: skip
    assert main(train_args) == 0
    assert main(["image", "evaluate", str(run), "--samples", "5", "--subset", "50"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["n_components"] == 2 and result["n_images"] == 50
    assert math.isfinite(result["nll_mixture"])
    assert (run / "evaluation.md").read_text().startswith("# vanilla, S=2")
    assert main(train_args) == 2  # an existing run is not overwritten
    assert "overwrite" in capsys.readouterr().err


def test_cli_trains_a_large_shared_mixture(tmp_path):
    run = tmp_path / "shared"
    args = ["image", "train", "--arch", "vampprior", "--n-components", "50", "--shared-encoder",
            "--sampled-components", "1", "--epochs", "1", "--subset", "200", "--out", str(run),
            "--no-progress-bar"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["n_components"] == 50 and config["shared_encoder"]
    assert config["n_sampled_components"] == 1
    assert main(["image", "evaluate", str(run), "--samples", "2", "--subset", "20"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert len(result["component_usage"]) == 50  # evaluation uses every component
    text = (run / "evaluation.md").read_text()
    assert text.startswith("# vampprior, S=50 (shared encoder, A=1)")


def _config(**kwargs):
    from scmixvae.image.training import ImageTrainConfig

    settings = {
        "architecture": "vanilla",
        "n_components": 2,
        "subset": 200,
        "epochs": 2,
        "warmup_epochs": 1,
        "seed": 3,
        "model_kwargs": {"n_hidden": 32, "n_latent": 6},
    }
    return ImageTrainConfig(**(settings | kwargs))


def test_image_training_restores_weights_on_a_nan_loss(tmp_path, monkeypatch, data_dir):
    from scmixvae.guards import TrainingDivergedError
    from scmixvae.image import training

    calls = {"n": 0}
    original = training.bound

    def bound_turning_nan(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] > 5 else value  # in the second epoch

    monkeypatch.setattr(training, "bound", bound_turning_nan)
    with pytest.raises(TrainingDivergedError, match="end of epoch 1"):
        training.train(_config(epochs=3), tmp_path / "run", progress_bar=False)


def test_image_training_resumes_exactly(tmp_path, data_dir):
    from scmixvae.image.training import load_trained, train

    train(_config(epochs=3), tmp_path / "straight", progress_bar=False)
    train(_config(epochs=2), tmp_path / "resumed", progress_bar=False)
    summary = train(_config(epochs=3), tmp_path / "resumed", progress_bar=False, resume=True)
    assert summary["epochs_run"] == 3
    straight = load_trained(tmp_path / "straight")[0].state_dict()
    resumed = load_trained(tmp_path / "resumed")[0].state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_components"):
        train(_config(epochs=4, n_components=3), tmp_path / "resumed", resume=True)


def test_resumed_training_keeps_the_new_patience(tmp_path, data_dir):
    """Lightning restores early stopping's patience from the checkpoint unless told not to."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping

    from scmixvae.image.training import train

    class RecordPatience(pl.Callback):
        def __init__(self):
            self.seen: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module):
            stopper = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
            self.seen.append(stopper.patience)

    train(_config(epochs=1, patience=1), tmp_path, progress_bar=False)
    recorder = RecordPatience()
    summary = train(_config(epochs=3, patience=7), tmp_path, progress_bar=False, resume=True,
                    callbacks=[recorder])  # fmt: skip
    assert summary["epochs_run"] == 3
    assert recorder.seen == [7, 7]


def test_evaluation_leaves_the_global_generator_alone(mnist_batch):
    model = build_model("vanilla", 2, **_small("vanilla"))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate_model(model, mnist_batch, n_samples_per_component=3, batch_size=6, seed=9)
    torch.testing.assert_close(torch.rand(3), expected)


def test_device_batches_cover_every_image_once_per_pass_and_binarise():
    from scmixvae.image.data import DeviceBatches

    images = np.linspace(0.0, 1.0, 23 * 4, dtype=np.float32).reshape(23, 4)
    torch.manual_seed(0)
    ordered = DeviceBatches(images, 5, "cpu", binarize=False, shuffle=True)
    assert len(ordered) == 5
    passes = [torch.cat(list(ordered)) for _ in range(2)]
    for seen in passes:  # a permutation of the images: each exactly once
        rows = sorted(map(tuple, seen.tolist()))
        assert rows == sorted(map(tuple, images.tolist()))
    assert not torch.equal(passes[0], passes[1])  # a new order in every pass
    fixed = torch.cat(list(DeviceBatches(images, 5, "cpu", shuffle=False)))
    torch.testing.assert_close(fixed, torch.from_numpy(images))
    intensities = np.full((4000, 2), 0.3, dtype=np.float32)
    bits = torch.cat(list(DeviceBatches(intensities, 1000, "cpu", binarize=True)))
    assert set(bits.unique().tolist()) == {0.0, 1.0}
    assert abs(bits.mean().item() - 0.3) < 0.02
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(images, 0, "cpu")


def test_host_loader_path_trains_and_old_runs_resume_on_it(tmp_path, data_dir):
    from scmixvae.image.training import train

    summary = train(_config(epochs=1, device_data=False), tmp_path, progress_bar=False)
    assert summary["epochs_run"] == 1
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["device_data"]  # a run saved by scmixvae 0.2
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resumed = train(_config(epochs=2, device_data=False), tmp_path, progress_bar=False,
                    resume=True)  # fmt: skip
    assert resumed["epochs_run"] == 2
    with pytest.raises(ValueError, match="device_data"):  # another random stream: refused
        train(_config(epochs=3), tmp_path, progress_bar=False, resume=True)
    # the command line resumes a run on its own data path unless told otherwise
    from scmixvae.cli import _run_setting, build_parser

    def parsed(*flags):
        return _run_setting(build_parser().parse_args(["image", "train", "--out", str(tmp_path),
                                                       *flags]), "device_data", True)  # fmt: skip

    assert parsed("--resume") is False and parsed() is True
    assert parsed("--resume", "--device-data") is True and parsed("--no-device-data") is False
    fresh = build_parser().parse_args(["image", "train", "--out", str(tmp_path / "n"), "--resume"])
    assert _run_setting(fresh, "device_data", True) is True
