"""Training and evaluating the image mixture VAEs with Lightning."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from scmixvae.guards import NonFiniteLossGuard, RNGStateCheckpoint
from scmixvae.io import atomic_path
from scmixvae.mixture import (
    DEFAULT_OBJECTIVE,
    DrawTerms,
    Objective,
    accumulate_log_weights,
    bound,
    component_responsibilities,
    jsd,
    log_likelihood_from_sums,
    log_weights,
    validate_objective,
)

from .data import ImageDataModule, load_splits
from .models import MixtureImageVAE, build_model, check_images

log = logging.getLogger(__name__)
CONFIG_FILE, RESULT_FILE, EVALUATION_FILE = "config.json", "training.json", "evaluation.json"


@dataclass
class ImageTrainConfig:
    """Everything that defines an image run (saved as ``config.json`` beside the checkpoints).

    Defaults follow the method's experiments: Adam with learning rate 5e-4, batches of 100,
    linear KL warm-up over 100 epochs, early stopping on the validation bound.
    ``shared_encoder`` amortizes the ``S`` encoders; ``n_sampled_components`` (``A``) draws from
    ``A`` components per image and step (``None``: all), in training and validation; test
    evaluation always uses all ``S``. ``device_data`` keeps the images on the training device
    and slices batches there (:class:`~scmixvae.image.data.DeviceBatches`); ``False`` is the
    host ``DataLoader`` of scmixvae 0.2 (the same distribution, another random stream).
    ``compile`` runs the training loss through :func:`torch.compile`; where it cannot compile
    (no C++ compiler, an unsupported platform) training goes on uncompiled and the log says so.
    """

    architecture: str = "vanilla"
    dataset: str = "mnist"
    n_components: int = 1
    objective: Objective = DEFAULT_OBJECTIVE
    shared_encoder: bool = False
    n_sampled_components: int | None = None
    n_particles: int = 1
    importance_weighted: bool = False
    epochs: int = 100
    batch_size: int = 100
    lr: float = 5e-4
    warmup_epochs: int = 100
    patience: int = 50
    seed: int = 0
    subset: int | None = None
    max_minutes: float | None = None
    device_data: bool = True
    compile: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)


class ImageVAEPlan(pl.LightningModule):
    """Lightning wrapper: negative bound as the loss, linear KL warm-up, validation bound."""

    def __init__(self, model: MixtureImageVAE, config: ImageTrainConfig, steps_per_epoch: int):
        super().__init__()
        self.model = model
        self.config = config
        self.objective = validate_objective(config.objective)
        self.warmup_steps = config.warmup_epochs * steps_per_epoch
        self._compiled_loss = _compiled(self._loss) if config.compile else None
        self.compile_fallback: str | None = None
        self._compile_tried = False

    def _terms(self, x: torch.Tensor, n_samples: int) -> DrawTerms:
        return self.model.draw_terms(
            x,
            n_samples,
            n_sampled_components=self.config.n_sampled_components,
            with_sub_mixture=self.objective == "some_to_some",
        )

    def _beta(self) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / self.warmup_steps)

    def _loss(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        terms = self._terms(x, self.config.n_particles)
        return -bound(terms, self.objective, beta, self.config.importance_weighted).mean()

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # beta as a tensor: a changing Python float would make torch.compile recompile
        beta = torch.tensor(self._beta(), dtype=x.dtype, device=x.device)
        # a non-finite loss is caught by NonFiniteLossGuard, which restores the last good epoch
        loss = self._compiled_step(x, beta) if self._compiled_loss else self._loss(x, beta)
        # epoch means only: Lightning accumulates them on the device, so no step waits for the
        # device to report a number (a per-step value would be read back at every step)
        self.log("train_loss", loss.detach(), prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=x.shape[0])  # fmt: skip
        return loss

    def _compiled_step(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        if self._compile_tried:
            return self._compiled_loss(x, beta)
        self._compile_tried = True
        try:  # the first call compiles: a platform that cannot is told, then trained eagerly
            return self._compiled_loss(x, beta)
        except Exception as error:  # any compiler failure; the eager call re-raises real bugs
            self.compile_fallback = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            log.warning("torch.compile failed (%s); training uncompiled", self.compile_fallback)
            self._compiled_loss = self._loss
            return self._loss(x, beta)

    def on_train_epoch_end(self) -> None:
        self.log("beta", self._beta())

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        terms = self._terms(x, 1)
        self.log("val_loss", -bound(terms, self.objective).mean(), prog_bar=True,
                 batch_size=x.shape[0])  # fmt: skip
        self.log("val_jsd", jsd(terms).mean(), batch_size=x.shape[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr)


def _mixture_options(config: ImageTrainConfig) -> str:
    """`` (shared encoder, A=1)``-style note of the non-default mixture options."""
    notes = ["shared encoder"] if config.shared_encoder else []
    if config.n_sampled_components is not None:
        notes.append(f"A={config.n_sampled_components}")
    if config.objective != DEFAULT_OBJECTIVE:
        notes.append(config.objective)
    return f" ({', '.join(notes)})" if notes else ""


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


def train(
    config: ImageTrainConfig,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    accelerator: str = "auto",
    progress_bar: bool = True,
    overwrite: bool = False,
    callbacks: list[pl.Callback] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train an image mixture VAE; write config, checkpoints, CSV logs and ``training.json``.

    ``callbacks`` are extra Lightning callbacks (timers, loggers, ...), run with the
    checkpointing and early stopping that training always has. A NaN or infinite loss stops
    training, restores the weights of the last complete epoch and raises
    :class:`~scmixvae.guards.TrainingDivergedError`.

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint (weights,
    optimiser, early-stopping state and random-number generators), for example after an
    interruption or with a larger ``config.epochs``; every other setting must be the saved one.

    Returns
    -------
    The training summary written to ``out_dir/training.json`` (wall time and epochs summed over
    resumed sessions).
    """
    out = Path(out_dir)
    last = out / "checkpoints" / "last.ckpt"
    previous: dict[str, Any] = {}
    if resume:
        _check_resumable(out, config)
        if (out / RESULT_FILE).exists():
            previous = json.loads((out / RESULT_FILE).read_text())
    elif (out / RESULT_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a trained model; pass overwrite=True.")
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, verbose=False)
    splits = load_splits(config.dataset, data_dir, seed=config.seed, subset=config.subset)
    data = ImageDataModule(splits, batch_size=config.batch_size, eval_batch_size=500,
                           device_resident=config.device_data)  # fmt: skip
    model = build_model(
        config.architecture, config.n_components, config.shared_encoder, **config.model_kwargs
    )
    steps_per_epoch = -(-len(splits.train) // config.batch_size)
    plan = ImageVAEPlan(model, config, steps_per_epoch)
    _write_json(out / CONFIG_FILE, asdict(config))
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints", monitor="val_loss", save_top_k=1, save_last=True,
        filename="best",
    )  # fmt: skip
    guard = NonFiniteLossGuard(check_every_step=not config.device_data)
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        max_time={"minutes": config.max_minutes} if config.max_minutes else None,
        accelerator=accelerator,
        devices=1,
        callbacks=[
            checkpoint,
            _ConfiguredEarlyStopping(monitor="val_loss", patience=config.patience),
            guard,
            RNGStateCheckpoint(),
            *(callbacks or []),
        ],
        logger=CSVLogger(out, name="logs"),
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
    )
    start = time.perf_counter()
    trainer.fit(plan, datamodule=data, ckpt_path=str(last) if resume and last.exists() else None)
    guard.raise_if_diverged()
    seconds = previous.get("wall_seconds", 0.0) + time.perf_counter() - start
    epochs_run = trainer.current_epoch
    summary = {
        "config": asdict(config),
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < config.epochs and not trainer.interrupted,
        "wall_seconds": seconds,
        "seconds_per_epoch": seconds / max(1, epochs_run),
        "best_val_loss": float(checkpoint.best_model_score)
        if checkpoint.best_model_score is not None
        else None,
        "best_checkpoint": Path(checkpoint.best_model_path).name,
        "n_train": len(splits.train),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "compile_fallback": plan.compile_fallback,
    }
    _write_json(out / RESULT_FILE, summary)
    return summary


# settings a resumed run may change: how long it trains
RESUMABLE_CHANGES = ("epochs", "max_minutes", "patience")
# runs saved by scmixvae 0.2 trained from a host DataLoader
SETTINGS_BEFORE_THEY_EXISTED = {"device_data": False, "compile": False}


class _ConfiguredEarlyStopping(EarlyStopping):
    """Early stopping whose patience is the configuration's, also in a resumed run.

    Lightning's ``EarlyStopping`` restores its patience from the checkpoint, which would
    silently undo a changed ``patience`` (one of :data:`RESUMABLE_CHANGES`).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def _compiled(function):
    """``torch.compile(function)``, or ``function`` itself where torch cannot compile at all."""
    try:
        return torch.compile(function)
    except Exception as error:  # e.g. a RuntimeError on an unsupported Python
        log.warning("torch.compile is unavailable here (%s); training uncompiled", error)
        return function


def saved_setting(out_dir: str | os.PathLike, key: str, default: Any) -> Any:
    """A setting of the run saved in ``out_dir`` (a setting added since: its old value), or
    ``default`` where there is no run."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return default
    return {**SETTINGS_BEFORE_THEY_EXISTED, **json.loads(path.read_text())}.get(key, default)


def _check_resumable(out: Path, config: ImageTrainConfig) -> None:
    if not (out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{out} holds no {CONFIG_FILE}: there is no run to resume.")
    # a setting added after the run was saved has the value that run had: its old behaviour
    saved = {**SETTINGS_BEFORE_THEY_EXISTED, **json.loads((out / CONFIG_FILE).read_text())}
    wanted = asdict(config)
    differ = sorted(k for k in wanted if k not in RESUMABLE_CHANGES and saved.get(k) != wanted[k])
    if differ:
        raise ValueError(
            f"cannot resume {out}: settings differ from the saved run ({', '.join(differ)}); "
            f"only {', '.join(RESUMABLE_CHANGES)} may change."
        )


def load_trained(out_dir: str | os.PathLike) -> tuple[MixtureImageVAE, ImageTrainConfig]:
    """The best model of a training directory, in eval mode, and its configuration."""
    out = Path(out_dir)
    if not (out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{out} holds no {CONFIG_FILE}: not a training directory.")
    config = ImageTrainConfig(**json.loads((out / CONFIG_FILE).read_text()))
    summary = json.loads((out / RESULT_FILE).read_text()) if (out / RESULT_FILE).exists() else {}
    ckpt = out / "checkpoints" / summary.get("best_checkpoint", "last.ckpt")
    if not ckpt.is_file():
        ckpt = out / "checkpoints" / "last.ckpt"
    model = build_model(
        config.architecture, config.n_components, config.shared_encoder, **config.model_kwargs
    )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    except RuntimeError as error:
        # shared image encoders used to have a 64-unit coded layer after two shared layers
        raise ValueError(
            f"{ckpt} does not fit the {config.architecture} model its {CONFIG_FILE} describes"
            + (
                " (a shared encoder saved by an earlier scmixvae, whose coded layer was 64 units "
                "wide, must be retrained)"
                if config.shared_encoder
                else ""
            )
            + f": {error}"
        ) from error
    return model.eval(), config


@torch.no_grad()
def evaluate_model(
    model: MixtureImageVAE,
    images: torch.Tensor,
    n_samples_per_component: int = 5000,
    batch_size: int = 100,
    max_draws_per_pass: int = 20_000,
    seed: int = 0,
    objective: Objective = DEFAULT_OBJECTIVE,
) -> dict[str, Any]:
    """Importance-sampled test NLL (both estimators), bound, JSD and component usage.

    Every number comes from the same ``K`` draws of every one of the ``S`` components per
    image: the NLL estimators from their importance weights, the bound and the JSD from their
    average.

    Parameters
    ----------
    model
        A trained model (put in eval mode here).
    images
        ``[N, 784]`` binary images.
    n_samples_per_component
        Importance samples per component per image ``K`` (the papers use 5000 in all).
    batch_size
        Images per pass.
    max_draws_per_pass
        Bound on draws decoded at once (``k * S * batch``), the memory limit.
    seed
        Seed of the draws: same seed, same numbers.
    objective
        Which bound to report next to the NLL.
    """
    check_images(images)
    objective = validate_objective(objective)
    model.eval()
    device = next(model.parameters()).device
    n_components = model.n_components
    chunk = max(1, max_draws_per_pass // (n_components * batch_size))
    tight, paper, bounds, divergences, usage = [], [], [], [], []
    # a seed of its own: the caller's random-number generators are left as they were
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            bound_sum = torch.zeros(x.shape[0], device=device)
            jsd_sum = torch.zeros(x.shape[0], device=device)

            def log_weight_fn(k: int, x: torch.Tensor = x) -> torch.Tensor:
                nonlocal bound_sum, jsd_sum
                terms = model.draw_terms(x, k, with_sub_mixture=objective == "some_to_some")
                bound_sum = bound_sum + k * bound(terms, objective)
                jsd_sum = jsd_sum + k * jsd(terms)
                return log_weights(terms)

            sums = accumulate_log_weights(log_weight_fn, n_samples_per_component, chunk)
            tight.append(log_likelihood_from_sums(sums, n_samples_per_component, "mixture"))
            paper.append(log_likelihood_from_sums(sums, n_samples_per_component, "per_component"))
            usage.append(component_responsibilities(sums).T)
            bounds.append(bound_sum / n_samples_per_component)
            divergences.append(jsd_sum / n_samples_per_component)
    usage_mean = torch.cat(usage).mean(0).cpu()
    return {
        "nll_mixture": -float(torch.cat(tight).mean()),
        "nll_per_component": -float(torch.cat(paper).mean()),
        "negative_bound": -float(torch.cat(bounds).mean()),
        "jsd": float(torch.cat(divergences).mean()),
        "component_usage": [float(u) for u in usage_mean],
        "n_images": int(images.shape[0]),
        "n_samples_per_component": n_samples_per_component,
        "estimators": {
            "nll_mixture": "-log of the mean of all S*K importance weights (tight; default)",
            "nll_per_component": "-mean over components of each one's log-mean-exp "
            "(the method's reference code; looser)",
        },
    }


def evaluate(
    out_dir: str | os.PathLike,
    n_samples_per_component: int = 5000,
    data_dir: str | os.PathLike | None = None,
    subset: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Evaluate a training directory on its test split; writes ``evaluation.json`` and ``.md``.

    ``accelerator``: ``"auto"`` evaluates on a GPU when there is one, ``"cpu"`` on the CPU.
    """
    out = Path(out_dir)
    model, config = load_trained(out)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        model = model.to("cuda")
    splits = load_splits(config.dataset, data_dir, seed=config.seed, subset=config.subset)
    test = torch.from_numpy(splits.test[:subset] if subset else splits.test)
    start = time.perf_counter()
    result = evaluate_model(
        model, test, n_samples_per_component, seed=seed, objective=config.objective
    )
    result.update(
        eval_seconds=time.perf_counter() - start,
        seed=seed,
        architecture=config.architecture,
        dataset=config.dataset,
        n_components=config.n_components,
        objective=config.objective,
    )
    training = json.loads((out / RESULT_FILE).read_text()) if (out / RESULT_FILE).exists() else {}
    result["training"] = {
        k: training.get(k) for k in ("epochs_run", "seconds_per_epoch", "wall_seconds")
    }
    result["config"] = asdict(config)
    _write_json(out / EVALUATION_FILE, result)
    with atomic_path(out / "evaluation.md") as tmp:
        tmp.write_text(
            f"# {config.architecture}, S={config.n_components}{_mixture_options(config)}, "
            f"{config.dataset}\n\n"
            f"| test NLL (mixture, tight) | test NLL (per-component) | -bound | JSD | K/comp | "
            f"images | epochs |\n|---|---|---|---|---|---|---|\n"
            f"| {result['nll_mixture']:.2f} | {result['nll_per_component']:.2f} | "
            f"{result['negative_bound']:.2f} | {result['jsd']:.3f} | {n_samples_per_component} | "
            f"{result['n_images']} | {training.get('epochs_run')} |\n"
        )
    return result
