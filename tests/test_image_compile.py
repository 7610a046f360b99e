"""``ImageTrainConfig(compile=True)``: the loss through torch.compile, or a told fallback."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from scmixvae.image import training


def _config(**kwargs) -> training.ImageTrainConfig:
    settings = {"architecture": "vanilla", "n_components": 2, "subset": 200, "epochs": 2,
                "warmup_epochs": 1, "seed": 3,
                "model_kwargs": {"n_hidden": 32, "n_latent": 6}}  # fmt: skip
    return training.ImageTrainConfig(**(settings | kwargs))


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_a_platform_that_cannot_compile_trains_uncompiled_and_says_so(
    tmp_path, data_dir, monkeypatch, caplog
):
    def no_compiler(function):
        def fails(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="scmixvae.image.training"):
        summary = training.train(_config(compile=True), tmp_path / "c", progress_bar=False)
    assert summary["compile_fallback"] == (
        "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    )
    assert "training uncompiled" in caplog.text
    # the fallback happens before any update: the run is the uncompiled run, weight for weight
    eager = training.train(_config(), tmp_path / "e", progress_bar=False)
    assert eager["compile_fallback"] is None
    compiled, plain = _weights(tmp_path / "c"), _weights(tmp_path / "e")
    assert all(torch.equal(compiled[k], plain[k]) for k in plain)
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["compile"] is True


def test_torch_missing_compile_support_is_told_at_once(tmp_path, data_dir, monkeypatch, caplog):
    def unsupported(function):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with caplog.at_level(logging.WARNING, logger="scmixvae.image.training"):
        summary = training.train(_config(compile=True, epochs=1), tmp_path, progress_bar=False)
    assert summary["epochs_run"] == 1 and "unavailable here" in caplog.text


@pytest.mark.slow  # compiling takes a minute or two on 2 CPU cores
def test_compiled_training_learns_like_the_eager_one(tmp_path, data_dir):
    """Where torch can compile (a C++ compiler is present) the compiled loss trains; elsewhere
    the fallback above is taken and said. Either way the run is a valid one."""
    compiled = training.train(_config(compile=True, epochs=3), tmp_path / "c", progress_bar=False)
    eager = training.train(_config(epochs=3), tmp_path / "e", progress_bar=False)
    assert compiled["epochs_run"] == eager["epochs_run"] == 3
    # another random stream where inductor draws its own normals, so close, not equal
    assert abs(compiled["best_val_loss"] - eager["best_val_loss"]) < 0.02 * eager["best_val_loss"]
