"""The authors' own MISVAE training loop, timed on our data for :mod:`benchmarks.images.cost`.

Lagergren-Lab/MixtureVAEs (Kviman et al., ICML 2023) is not a dependency and none of its code
is in this project: the benchmark imports it from a checkout the user names
(``--authors-code PATH``), builds the authors' ``MISVAE`` (gated dense 300-300 encoders, one per
component, latent 40, Adam 5e-4) and runs their ``mnist_train.trainer`` unmodified, with
minibatches drawn the way their ``load_mnist`` draws them (a ``DataLoader`` over the first
50,000 training images, batch 100, shuffled; validation binarised once). Only the data source
differs: their loader downloads through torchvision, ours reads ``SCMIXVAE_DATA_DIR``.

The training part of each epoch is timed by wrapping their ``evaluate`` (the validation pass
that ends every epoch): epoch ``i`` trains from the end of validation ``i - 1`` to the start of
validation ``i``. Their best-model ``torch.save`` (after a validation that improves) falls in
the next epoch's window; it takes a few milliseconds against seconds of training.
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from pathlib import Path

import torch

CODE_DIR = "Exp_2D_and_MNIST_and_FashionMNIST_NLL"


def authors_code_dir(checkout: str | Path) -> Path:
    """The directory of the authors' MNIST experiments inside a checkout, checked."""
    code_dir = Path(checkout) / CODE_DIR
    if not (code_dir / "mnist_train.py").is_file() or not (code_dir / "models").is_dir():
        raise SystemExit(
            f"--authors-code {checkout}: expected a checkout of Lagergren-Lab/MixtureVAEs "
            f"with {CODE_DIR}/mnist_train.py and {CODE_DIR}/models/."
        )
    return code_dir


def _import_authors(code_dir: Path):
    """Their ``mnist_train`` module and ``MISVAE`` class, without torchvision.

    ``mnist_train`` imports its torchvision dataset loaders at import time; they are replaced
    by a stand-in module, because the data come from :func:`scmixvae.image.data.load_splits`.
    """
    stand_in = types.ModuleType("data.load_data")
    stand_in.load_mnist = stand_in.load_fashion_mnist = None
    sys.modules["data.load_data"] = stand_in
    sys.path.insert(0, str(code_dir))
    import mnist_train
    from models.misvae import MISVAE

    return mnist_train, MISVAE


def time_authors_epochs(
    checkout: str | Path,
    n_components: int,
    dataset: str,
    epochs: int,
    subset: int | None = None,
    seed: int = 0,
) -> dict:
    """Train the authors' MISVAE for ``epochs`` epochs; seconds of each epoch's training part.

    Returns ``epoch_seconds`` (one per epoch) and ``n_parameters``.
    """
    from torch.utils.data import DataLoader, TensorDataset

    from scmixvae.image.data import load_splits

    mnist_train, MISVAE = _import_authors(authors_code_dir(checkout))
    splits = load_splits(dataset, subset=subset)
    torch.manual_seed(42)  # their load_mnist's split seed, which also seeds the shuffling

    def loader(images) -> DataLoader:
        images = torch.from_numpy(images)
        return DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=100,
                          shuffle=True)  # fmt: skip

    train_loader, valid_loader = loader(splits.train), loader(splits.valid)
    vae = MISVAE(S=n_components, lr=5e-4, seed=seed, L=1, device="cpu", z_dims=40)

    marks: list[tuple[float, float]] = []
    evaluate = mnist_train.evaluate

    def timed_evaluate(*args, **kwargs):
        start = time.perf_counter()
        out = evaluate(*args, **kwargs)
        marks.append((start, time.perf_counter()))
        return out

    mnist_train.evaluate = timed_evaluate
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            begin = time.perf_counter()
            mnist_train.trainer(vae, train_loader, valid_loader, run_dir, n_epochs=epochs,
                                verbose=False, L=1, warmup="kl_warmup", N=100,
                                val_obj_f="miselbo")  # fmt: skip
    finally:
        mnist_train.evaluate = evaluate
    starts = [begin] + [end for _, end in marks[:-1]]
    windows = zip(starts, marks, strict=True)
    return {
        "epoch_seconds": [eval_start - start for start, (eval_start, _) in windows],
        "n_parameters": sum(p.numel() for p in vae.parameters()),
    }
