"""The harness that times the authors' MISVAE code, on a stand-in checkout (no download)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from benchmarks.images import authors_misvae as _authors_misvae
from benchmarks.images.cost import main as image_cost_main
from scmixvae.image.data import ImageSplits

TRAIN_S, EVAL_S = 0.15, 0.4

# the interface of Lagergren-Lab/MixtureVAEs that the harness uses, with known durations
TRAINER = f"""
import time
from data.load_data import load_mnist, load_fashion_mnist  # replaced by the harness

def evaluate(vae, dataloader, L, obj_f="iwelbo", convs=False):
    time.sleep({EVAL_S})
    return 1.0

def trainer(vae, train_dataloader, val_dataloader, dir_, n_epochs=200, verbose=True, L=50,
            warmup=None, N=100, val_obj_f="miselbo", convs=False):
    for epoch in range(n_epochs):
        for x, y in train_dataloader:
            assert x.shape[1:] == (784,) and len(x) <= 100
        time.sleep({TRAIN_S})
        evaluate(vae, val_dataloader, L=L, obj_f=val_obj_f, convs=convs)
    return None, None
"""
MISVAE = """
import torch

class MISVAE(torch.nn.Module):
    def __init__(self, S=2, L=1, device="cuda:0", seed=0, z_dims=40, lr=1e-3):
        super().__init__()
        self.layer = torch.nn.Linear(784, S * z_dims)
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    code = tmp_path / "MixtureVAEs" / _authors_misvae.CODE_DIR
    (code / "models").mkdir(parents=True)
    (code / "mnist_train.py").write_text(textwrap.dedent(TRAINER))
    (code / "models" / "misvae.py").write_text(textwrap.dedent(MISVAE))
    rng = np.random.default_rng(0)
    valid = (rng.random((120, 784)) < 0.5).astype(np.float32)
    splits = ImageSplits(rng.random((250, 784), dtype=np.float32), valid, None, True)
    monkeypatch.setattr("scmixvae.image.data.load_splits", lambda *a, **k: splits)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield code.parent
    for name in ("mnist_train", "models", "models.misvae", "data.load_data"):
        sys.modules.pop(name, None)


def test_times_the_training_part_of_each_epoch(checkout):
    timed = _authors_misvae.time_authors_epochs(checkout, 3, "mnist", epochs=3)
    assert len(timed["epoch_seconds"]) == 3
    # each epoch's window holds its training, not the validation around it
    assert all(TRAIN_S <= s < EVAL_S for s in timed["epoch_seconds"]), timed
    assert timed["n_parameters"] == 784 * 3 * 40 + 3 * 40


def test_refusals(checkout, tmp_path, capsys):
    with pytest.raises(SystemExit, match="expected a checkout of Lagergren-Lab/MixtureVAEs"):
        _authors_misvae.authors_code_dir(tmp_path / "elsewhere")
    common = ["--data", "authors", "--authors-code", str(checkout)]
    refused = {
        "needs --authors-code PATH": ["--models", "S1", "S5", "--data", "authors"],
        "stratified S only": ["--models", "S1", "S5:shared:A1", *common],
        "vanilla MISVAE on mnist or fashion_mnist": ["--models", "S1", "--arch", "composite",
                                                     *common],
    }  # fmt: skip
    for message, argv in refused.items():
        with pytest.raises(SystemExit):  # argparse's error, before anything runs
            image_cost_main(argv)
        assert message in capsys.readouterr().err
