"""Every place where scmixvae relies on scvi-tools behaviour that has no public hook.

Each workaround here has a test in ``tests/test_scvi_compat.py`` that fails if scvi-tools
changes under it; nothing else in the package depends on scvi-tools internals.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from uuid import uuid4

import rich.pretty  # noqa: F401  scvi-tools 1.4 calls rich.pretty without importing it
from lightning.pytorch.callbacks import ModelCheckpoint
from scvi.data._constants import _ADATA_MINIFY_TYPE_UNS_KEY
from scvi.dataloaders import CollectionAdapter
from scvi.train import SaveCheckpoint

# the message SCANVI.from_scvi_model passes to the model's _check_if_trained
SCANVI_FROM_SCVI_MESSAGE = "Passed in scvi model hasn't been trained yet."
SCANVI_REFUSAL = (
    "SCANVI.from_scvi_model cannot start from a MixSCVI: SCANVI's encoder is one Gaussian, so "
    "the mixture's S encoders have no place in it, and loading the rest would silently start "
    "SCANVI from an untrained encoder. Use scmixvae.MixSCANVI.from_scvi_model(mixscvi, "
    "unlabeled_category=...), which keeps every trained weight."
)
# set while MixSCANVI.from_scvi_model runs scvi-tools' conversion on a MixSCVI
_CONVERTING_TO_MIXSCANVI: ContextVar[bool] = ContextVar("converting_to_mixscanvi", default=False)


def with_checkpoint_support(callbacks: list) -> list:
    """Let Lightning ``ModelCheckpoint`` callbacks work in scvi-tools' trainer.

    scvi-tools turns Lightning's checkpointing on only when the callbacks hold a
    :class:`scvi.train.SaveCheckpoint`, and otherwise adds one of its own that writes
    scvi-tools model folders into ``settings.logging_dir``. A ``SaveCheckpoint`` that never
    saves (``save_top_k=0``, never scheduled) turns checkpointing on and keeps scvi-tools' own
    away, so the user's ``ModelCheckpoint`` writes what and where the user asked.
    """
    plain = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if plain and not any(isinstance(c, SaveCheckpoint) for c in callbacks):
        return [*callbacks, DormantSaveCheckpoint()]
    return callbacks


class DormantSaveCheckpoint(SaveCheckpoint):
    """A :class:`scvi.train.SaveCheckpoint` that never saves (:func:`with_checkpoint_support`)."""

    def __init__(self) -> None:
        # Lightning creates the folder of every checkpoint callback: a temporary one, removed
        # when training ends, so nothing appears in scvi-tools' logging folder
        self._folder = tempfile.mkdtemp(prefix="scmixvae-unused-checkpoints-")
        super().__init__(
            dirpath=self._folder, filename="never", monitor=None, save_top_k=0, every_n_epochs=0
        )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None


def init_without_data(model) -> None:
    """Set up a model with neither AnnData nor registry, as scvi-tools does for its SCVI.

    scvi-tools' ``BaseModelClass.__init__`` allows this mode (the module is built by ``train``
    from a datamodule) only for classes named ``SCVI`` or ``GIMVI``; these are the attributes
    it sets for them, plus an empty AnnData and manager, which its SCVI leaves unset (so
    ``model.adata`` is ``None`` instead of an AttributeError).
    """
    model._adata = None
    model._adata_manager = None
    model.id = str(uuid4())
    model._module_init_on_train = True
    model.is_trained_ = False
    model._model_summary_string = ""
    model.train_indices_ = None
    model.test_indices_ = None
    model.validation_indices_ = None
    model.history_ = None
    model.get_normalized_function_name_ = "get_normalized_expression"
    model.run_name_ = f"run_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    model.run_id_ = ""


def is_collection(adata) -> bool:
    """Whether ``adata`` is an AnnCollection in :class:`scvi.dataloaders.CollectionAdapter`.

    The adapter reports ``AnnData`` as its class, so ``isinstance`` cannot tell.
    """
    return type(adata) is CollectionAdapter


def layer_names(adata) -> list[str]:
    """The layer names of an AnnData or an adapted AnnCollection (whose layers lack ``in``)."""
    return list(adata.layers.keys())


def refuse_scanvi_conversion(message: str | None) -> None:
    """Raise a clear error when ``SCANVI.from_scvi_model`` is given a MixSCVI.

    scvi-tools offers no hook for it; its first call on the given model is
    ``_check_if_trained`` with :data:`SCANVI_FROM_SCVI_MESSAGE`.
    """
    if message == SCANVI_FROM_SCVI_MESSAGE and not _CONVERTING_TO_MIXSCANVI.get():
        raise TypeError(SCANVI_REFUSAL)


@contextmanager
def converting_to_mixscanvi() -> Iterator[None]:
    """Let scvi-tools' ``SCANVI.from_scvi_model`` take a MixSCVI (for MixSCANVI only)."""
    token = _CONVERTING_TO_MIXSCANVI.set(True)
    try:
        yield
    finally:
        _CONVERTING_TO_MIXSCANVI.reset(token)


def with_label_subsampling(callbacks: list, n_samples_per_label: float | None) -> list:
    """Add scvi-tools' label subsampling callback, which its ``SemisupervisedTrainingMixin``
    drops whenever ``callbacks`` are passed (it adds the two lists without keeping the sum)."""
    if n_samples_per_label is None:
        return callbacks
    from scvi.train._callbacks import SubSampleLabels

    if any(isinstance(c, SubSampleLabels) for c in callbacks):
        return callbacks
    return [*callbacks, SubSampleLabels()]


def training_device(accelerator: str, device):
    """The torch device Lightning will train on, resolved as scvi-tools' own
    ``DeviceBackedDataSplitter`` resolves it (``scvi.model._utils.parse_device_args``)."""
    from scvi.model._utils import parse_device_args

    return parse_device_args(accelerator=accelerator, devices=device, return_device="torch")[2]


def minify_type(adata) -> str | None:
    """The minification of an AnnData (scvi-tools records it in ``.uns``), or ``None``."""
    return adata.uns.get(_ADATA_MINIFY_TYPE_UNS_KEY) if hasattr(adata, "uns") else None


def count_matrix(adata, layer: str | None):
    """The count matrix the model reads, as an object the count checks can read in full."""
    if is_collection(adata):
        return CollectionRows(adata, layer)
    return adata.X if layer is None else adata.layers[layer]


class CollectionRows:
    """Row blocks of an adapted AnnCollection's count matrix, for the count checks.

    scvi-tools' adapter exposes a layer whose ``.data`` is a sample of the first cells only;
    the checks need every row, read a block of cells at a time.
    """

    def __init__(self, adata, layer: str | None):
        self.collection, self.layer = adata.collection, layer
        self.shape = adata.collection.shape

    def __getitem__(self, rows: slice):
        view = self.collection[rows]
        return view.X if self.layer is None else view.layers[self.layer]


def load_datamodule_model(cls, saved: dict, datamodule=None):
    """The model saved in ``saved`` (a ``model.pt``'s content) after datamodule training.

    scvi-tools' ``load`` rebuilds such a module from the module class's named parameters
    only; the mixture module takes ``n_latent``, ``gene_likelihood`` and ``dispersion`` through
    ``**kwargs``, so that rebuild would lose them. Here the model class builds the module from
    the saved registry and constructor arguments, as when it was trained, and the weights load
    into it, through scvi-tools' own model initialiser.
    """
    import inspect

    from scvi.model.base._save_load import _initialize_model

    attr_dict = dict(saved["attr_dict"])
    registry = attr_dict.pop("registry_")
    if registry.get("model_name", cls.__name__) != cls.__name__:
        raise ValueError(f"the saved model is a {registry['model_name']}, not a {cls.__name__}.")
    non_kwargs = attr_dict["init_params_"]["non_kwargs"]
    if "datamodule" in non_kwargs:  # saved as the datamodule's type
        non_kwargs["datamodule"] = None
    if "datamodule" not in inspect.signature(cls).parameters:
        datamodule = None
    model = _initialize_model(cls, None, registry, attr_dict, datamodule)
    state = {k: v for k, v in saved["model_state_dict"].items() if k != "pyro_param_store"}
    model.module.load_state_dict(state)
    model.module.eval()
    return model
