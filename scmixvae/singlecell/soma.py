"""Training and embedding from a TileDB-SOMA experiment (the CELLxGENE Census format).

Built on scvi-tools' :class:`scvi.dataloaders.TileDBDataModule` (tiledbsoma-ml streams the
counts from disk), with what an atlas user needs around it:

- **checked inputs**: a missing store, measurement, X layer, batch or label column is named in
  one line before anything is read;
- **a pinned snapshot**: the experiment is opened at the time the datamodule is made, so cells
  written to the store while a model trains are never mixed in; if the store has changed by the
  time training or inference starts, it is refused in one line;
- **memory that does not grow with the atlas**: TileDB's read budget is bounded
  (``memory_budget``; by default TileDB may buffer gigabytes more the larger the array), and
  the batch labels are collected a chunk of ``obs`` at a time instead of reading the column
  for every cell at once;
- **raw counts checked**: the X layer's first stored values must be counts, as
  ``setup_anndata`` checks an AnnData's;
- **gene names in the registry** (the store's ``var`` id column, not TileDB join ids), so a
  model trained from disk checks the genes of any store or AnnData it is later given;
- **embeddings in order**: :func:`embed_soma` streams every cell of a query once, in
  ``soma_joinid`` order, and returns an AnnData holding only ``obs`` and the embedding; the
  count matrix is never loaded.

Needs the ``atlas`` extra: ``pip install "scmixvae[atlas]"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

VAR_NAME_COLUMNS = ("var_id", "feature_id", "gene_ids", "feature_name", "gene_symbols")
JOINID_KEY = "soma_joinid"
# TileDB's sm.mem.total_budget for every read. Its own default (10 GiB) lets the sparse reader
# buffer more the larger the X array is; 512 MiB kept peak memory flat from 1M to 2M cells with
# no loss of throughput (benchmarks/results/atlas_throughput.md).
DEFAULT_MEMORY_BUDGET = 512 * 2**20
COUNTS_SAMPLE_CELLS = 2_000  # cells of the X layer checked for counts when a datamodule is made
SOMA_REGISTRY_KEY = "soma"  # where a model's registry records how to read its store again
BATCH_COLSEP = "//"  # how scvi-tools' TileDBDataModule joins several batch columns


def _soma():
    try:
        import tiledbsoma
        import tiledbsoma_ml  # noqa: F401  (scvi-tools' TileDBDataModule imports it lazily)
    except ImportError as err:  # pragma: no cover - the atlas extra is installed in CI
        raise ImportError(
            "training from a SOMA experiment needs tiledbsoma and tiledbsoma-ml: "
            'pip install "scmixvae[atlas]"'
        ) from err
    return tiledbsoma


def is_soma_experiment(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` holds a SOMA experiment (``False`` without the atlas extra)."""
    try:
        tiledbsoma = _soma()
    except ImportError:
        return False
    try:
        return bool(tiledbsoma.Experiment.exists(str(uri)))
    except Exception:  # a path TileDB cannot parse is not an experiment
        return False


class StoreChangedError(ValueError):
    """The SOMA experiment changed between making a datamodule and reading it."""


def _as_list(keys: str | Sequence[str] | None) -> list[str] | None:
    if keys is None:
        return None
    return [keys] if isinstance(keys, str) else list(keys)


class _Snapshot:
    """What a datamodule saw of the store: cells, genes and the time it was opened."""

    def __init__(self, exp, uri: str, measurement: str, var_names_column: str | None):
        self.uri, self.measurement = uri, measurement
        self.n_obs, self.var_names = self._read(exp, var_names_column)

    def _read(self, exp, var_names_column: str | None) -> tuple[int, list[str]]:
        var = exp.ms[self.measurement].var
        columns = var.schema.names
        if var_names_column is None:
            var_names_column = next((c for c in VAR_NAME_COLUMNS if c in columns), JOINID_KEY)
        elif var_names_column not in columns:
            raise KeyError(
                f"var_names_column {var_names_column!r} is not a column of "
                f"{self.measurement!r}.var (columns: {columns})."
            )
        self.var_names_column = var_names_column
        names = var.read(column_names=[var_names_column]).concat().to_pandas()
        self.obs_columns = list(exp.obs.schema.names)
        return int(exp.obs.count), names[var_names_column].astype(str).tolist()

    def check_unchanged(self) -> None:
        """Refuse a store whose cells or genes differ from the snapshot's."""
        tiledbsoma = _soma()
        if not tiledbsoma.Experiment.exists(self.uri):
            raise FileNotFoundError(f"the SOMA experiment {self.uri} no longer exists.")
        with tiledbsoma.Experiment.open(self.uri) as exp:
            n_obs, var_names = self._read(exp, self.var_names_column)
        if n_obs != self.n_obs or var_names != self.var_names:
            raise StoreChangedError(
                f"the SOMA experiment {self.uri} changed after its datamodule was made "
                f"({self.n_obs} -> {n_obs} cells, {len(self.var_names)} -> {len(var_names)} "
                "genes): make a new datamodule (soma_datamodule) for the store as it is now."
            )


def _context(memory_budget: int, tiledb_config: dict[str, Any] | None):
    """A SOMA context whose reads buffer at most ``memory_budget`` bytes."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | np.integer):
        raise TypeError(f"memory_budget must be a number of bytes, got {memory_budget!r}.")
    if memory_budget < 64 * 2**20:
        raise ValueError(
            f"memory_budget must be at least 64 MiB (67108864 bytes), got {memory_budget}: "
            "TileDB cannot read a tile of counts in less."
        )
    config = {"sm.mem.total_budget": int(memory_budget)} | dict(tiledb_config or {})
    return _soma().SOMATileDBContext(tiledb_config=config)


def _open_checked(uri: str, measurement: str, layer: str, columns: list[str], context=None):
    """The experiment opened at this moment (a pinned snapshot), its layout checked."""
    tiledbsoma = _soma()
    if not tiledbsoma.Experiment.exists(uri):
        raise FileNotFoundError(
            f"no SOMA experiment at {uri!r} (write one with tiledbsoma.io.from_h5ad)."
        )
    exp = tiledbsoma.Experiment.open(
        uri, tiledb_timestamp=int(time.time() * 1000), context=context
    )
    try:
        if measurement not in exp.ms:
            raise KeyError(
                f"measurement {measurement!r} is not in the experiment {uri} "
                f"(measurements: {list(exp.ms.keys())})."
            )
        layers = list(exp.ms[measurement].X.keys())
        if layer not in layers:
            raise KeyError(
                f"layer {layer!r} is not an X layer of {measurement!r} in {uri} "
                f"(layers: {layers}); it must hold raw counts."
            )
        obs_columns = exp.obs.schema.names
        missing = [c for c in columns if c not in obs_columns]
        if missing:
            raise KeyError(f"{missing} not in the obs of {uri} (columns: {obs_columns}).")
        _check_counts_sample(exp.ms[measurement].X[layer], f"{uri} X layer {layer!r}")
    except (KeyError, ValueError):
        exp.close()
        raise
    return exp


def _check_counts_sample(X, where: str, n_cells: int = COUNTS_SAMPLE_CELLS) -> None:
    """Refuse (or warn about) an X layer whose first cells do not hold counts.

    The layer is too large to check whole; its first ``n_cells`` rows are checked as
    ``setup_anndata`` checks an AnnData (:func:`~scmixvae.singlecell.validation.check_counts`).
    """
    import scipy.sparse as sp

    from .validation import check_counts

    table = X.read(coords=(slice(0, n_cells - 1),)).tables().concat()
    if table.num_rows == 0:
        return  # an empty layer (or first cells) has nothing to check; training finds no cells
    rows = table["soma_dim_0"].to_numpy()
    _, local_rows = np.unique(rows, return_inverse=True)
    values = table["soma_data"].to_numpy()
    sample = sp.csr_matrix(
        (values, (local_rows, table["soma_dim_1"].to_numpy())),
        shape=(int(local_rows.max()) + 1, int(X.shape[1])),
    )
    check_counts(
        sample,
        where=f"{where} (its first {n_cells} cells)",
        hint="MixSCVI models raw counts: name the X layer that holds them with layer=...",
    )


def _batch_values(query, columns: list[str], sep: str) -> list[str]:
    """The distinct batches of a query's cells, as scvi-tools joins the batch columns.

    Read a chunk of ``obs`` at a time (scvi-tools reads the columns for every cell at once,
    which grows with the atlas); sorted, the order scvi-tools' label encoder gives them.
    """
    seen: set[str] = set()
    for table in query.obs(column_names=columns):
        distinct = table.select(columns).group_by(columns).aggregate([]).to_pandas()
        seen.update(distinct[columns].astype(str).agg(sep.join, axis=1))
    return sorted(seen)


@contextmanager
def _one_process() -> Iterator[None]:
    """Let tiledbsoma-ml see rank 0 of 1, even inside a DDP process group."""
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE="1")  # read before the process group
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _datamodule_class():
    from scvi.dataloaders import TileDBDataModule

    class SomaDataModule(TileDBDataModule):
        """scvi-tools' TileDBDataModule over a pinned snapshot, with gene names and join ids.

        Made by :func:`soma_datamodule`; every argument of scvi-tools' class keeps its meaning.
        """

        def __init__(self, query, snapshot: _Snapshot, layer: str, *args, **kwargs):
            self.snapshot = snapshot
            self.layer = layer
            super().__init__(query, *args, layer_name=layer, **kwargs)

        whole_stream = False  # set by inference_datamodule: every cell, in this process

        def setup(self, stage: str | None = None) -> None:
            self.snapshot.check_unchanged()
            if self.whole_stream:  # tiledbsoma-ml fixes its DDP share when the dataset is made
                with _one_process():
                    super().setup(stage)
            else:
                super().setup(stage)
            # tiledbsoma-ml returns only the columns it is asked for; the join ids let
            # embed_soma place every cell, whatever order the stream yields.
            for dataset in (self.train_dataset, self.val_dataset):
                if dataset is not None and JOINID_KEY not in dataset.obs_column_names:
                    dataset.obs_column_names = [*dataset.obs_column_names, JOINID_KEY]

        def on_before_batch_transfer(self, batch, dataloader_idx: int) -> dict:
            _, obs = batch
            tensors = super().on_before_batch_transfer(batch, dataloader_idx)
            if JOINID_KEY in obs:
                tensors[JOINID_KEY] = torch.from_numpy(obs[JOINID_KEY].to_numpy(np.int64))
            # scvi-tools' keys stay first and in order, None values included: its
            # semi-supervised training plan recognises a labelled datamodule batch by its first
            # five keys, and trains no classifier otherwise
            return tensors

        @property
        def registry(self) -> dict:
            registry = super().registry
            x_state = registry["field_registries"]["X"]["state_registry"]
            x_state["column_names"] = list(self.snapshot.var_names)
            registry[SOMA_REGISTRY_KEY] = {
                "measurement": self.snapshot.measurement,
                "layer": self.layer,
                "batch_column_names": list(self.batch_column_names),
                "label_keys": None if self.label_keys is None else list(self.label_keys),
                "var_names_column": self.snapshot.var_names_column,
            }
            return registry

    return SomaDataModule


def soma_datamodule(
    experiment: str | os.PathLike,
    batch_key: str | Sequence[str],
    *,
    measurement: str = "RNA",
    layer: str = "data",
    labels_key: str | Sequence[str] | None = None,
    unlabeled_category: str = "Unknown",
    obs_value_filter: str | None = None,
    var_names_column: str | None = None,
    batch_size: int = 128,
    train_size: float = 0.9,
    shuffle: bool = True,
    seed: int | None = 0,
    batch_labels: Sequence[str] | None = None,
    io_batch_size: int = 65_536,
    model_name: str = "MixSCVI",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    tiledb_config: dict[str, Any] | None = None,
    **dataset_kwargs: Any,
):
    """A datamodule that streams raw counts from a SOMA experiment for training or inference.

    Parameters
    ----------
    experiment
        Path or URI of a SOMA experiment.
    batch_key
        ``obs`` column(s) whose combination is the batch (scvi-tools' ``batch_column_names``).
    measurement, layer
        Where the counts are: ``exp.ms[measurement].X[layer]``.
    labels_key, unlabeled_category
        ``obs`` column(s) with cell types, for :class:`~scmixvae.MixSCANVI`.
    obs_value_filter
        A SOMA value filter selecting cells, e.g. ``"tissue == 'blood'"``.
    var_names_column
        The ``var`` column with gene names; default: the first of ``var_id``, ``feature_id``,
        ``gene_ids``, ``feature_name``, ``gene_symbols`` present.
    batch_size, train_size, shuffle, seed
        As scvi-tools' datamodule; ``shuffle=False`` for inference.
    batch_labels
        The training datamodule's ``batch_labels``, so another query maps batches alike.
    io_batch_size
        Cells read from disk at once (memory scales with it times the genes).
    model_name
        The class the model will be (``"MixSCVI"`` or ``"MixSCANVI"``); ``load`` checks it.
    memory_budget
        Bytes TileDB may buffer for a read (``sm.mem.total_budget``; at least 64 MiB). The
        default, 512 MiB, keeps peak memory flat in the number of cells; TileDB's own default
        (10 GiB) does not.
    tiledb_config
        Further TileDB settings (e.g. for cloud stores); they override ``memory_budget``.

    Returns
    -------
    A :class:`scvi.dataloaders.TileDBDataModule` (subclass): pass its ``registry`` to
    ``MixSCVI(adata=None, registry=...)`` and the datamodule to ``train(datamodule=...)``.
    """
    tiledbsoma = _soma()
    uri = str(experiment)
    batch_columns, label_columns = _as_list(batch_key), _as_list(labels_key)
    if not batch_columns:
        raise ValueError(
            "batch_key is required to train from a SOMA experiment (scvi-tools' "
            "TileDBDataModule needs a batch column); name one, e.g. 'dataset_id'."
        )
    context = _context(memory_budget, tiledb_config)
    exp = _open_checked(uri, measurement, layer, batch_columns + (label_columns or []), context)
    snapshot = _Snapshot(exp, uri, measurement, var_names_column)
    obs_query = tiledbsoma.AxisQuery(value_filter=obs_value_filter)
    query = exp.axis_query(measurement, obs_query=obs_query)
    if batch_labels is None:  # else scvi-tools reads the batch columns of every cell at once
        batch_labels = _batch_values(query, batch_columns, BATCH_COLSEP)
    return _datamodule_class()(
        query,
        snapshot,
        layer,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        io_batch_size=io_batch_size,
        batch_column_names=batch_columns,
        batch_labels=batch_labels,
        label_keys=label_columns,
        unlabeled_category=unlabeled_category,
        train_size=train_size,
        split_seed=seed,
        model_name=model_name,
        dataloader_kwargs={"num_workers": 0, "persistent_workers": False},
        **dataset_kwargs,
    )


def check_store_genes(model, datamodule) -> None:
    """Refuse a store whose genes are not the model's, in order."""
    expected = list(model.registry["field_registries"]["X"]["state_registry"]["column_names"])
    found = list(datamodule.snapshot.var_names)
    if found != expected:
        missing = len(set(expected) - set(found))
        extra = len(set(found) - set(expected))
        raise ValueError(
            f"the genes of {datamodule.snapshot.uri} are not the model's: {missing} of its "
            f"{len(expected)} genes missing, {extra} extra"
            + (", same genes in another order" if not missing and not extra else "")
            + "; select the model's genes with a var query."
        )


def inference_datamodule(model, experiment: str | os.PathLike, **kwargs: Any):
    """A non-shuffled datamodule over ``experiment`` that reads it as ``model`` was trained.

    The batch columns, measurement, layer and batch labels come from the model's registry
    (set by :func:`soma_datamodule`); ``kwargs`` override them or pass ``obs_value_filter``.
    """
    registry = model.registry
    recorded = registry.get(SOMA_REGISTRY_KEY, {})
    batch_state = registry["field_registries"]["batch"]["state_registry"]
    options = {
        "batch_key": recorded.get("batch_column_names"),
        "measurement": recorded.get("measurement", "RNA"),
        "layer": recorded.get("layer", "data"),
        "var_names_column": recorded.get("var_names_column"),
        "batch_labels": list(batch_state["categorical_mapping"]),
        "batch_size": 1024,
        "train_size": 1.0,
        "shuffle": False,
        "model_name": registry.get("model_name", type(model).__name__),
    }
    if registry.get("model_name") in ("MixSCANVI", "SCANVI"):
        options["labels_key"] = recorded.get("label_keys")
        options["unlabeled_category"] = registry["field_registries"]["labels"]["state_registry"][
            "unlabeled_category"
        ]
    options.update(kwargs)
    if options["batch_key"] is None:
        raise ValueError(
            "the model does not record its SOMA batch columns (it was not trained through "
            "soma_datamodule): pass batch_key=..."
        )
    datamodule = soma_datamodule(experiment, **options)
    check_store_genes(model, datamodule)
    unknown = sorted(set(_obs_batches(datamodule)) - set(options["batch_labels"]))
    if unknown:
        raise ValueError(
            f"{len(unknown)} batch value(s) of {experiment} are not among the model's "
            f"(e.g. {unknown[:3]}); map a new batch with load_query_data first."
        )
    datamodule.whole_stream = True
    datamodule.setup()
    return datamodule


def _obs_batches(datamodule) -> list[str]:
    return _batch_values(datamodule.query, datamodule.batch_column_names, datamodule.batch_colsep)


def embed_soma(
    model,
    experiment: str | os.PathLike,
    key: str = "X_mixscvi",
    batch_size: int = 1024,
    **kwargs: Any,
) -> AnnData:
    """Every cell's latent representation, streamed from a SOMA experiment.

    Parameters
    ----------
    model
        A trained :class:`~scmixvae.MixSCVI` or :class:`~scmixvae.MixSCANVI`.
    experiment
        The SOMA experiment (the training store, or another with the model's genes).
    key
        ``obsm`` key of the embedding.
    kwargs
        For :func:`inference_datamodule`, e.g. ``obs_value_filter``.

    Returns
    -------
    An AnnData with no ``X``: ``obs`` indexed by the store's ``obs_id`` (else the join id) in
    ``soma_joinid`` order, with a ``soma_joinid`` column, and ``obsm[key]``
    (:meth:`~scmixvae.MixSCVI.get_latent_representation`'s mixture mean). Join it to the
    store's cells on ``soma_joinid``.
    """
    datamodule = inference_datamodule(model, experiment, batch_size=batch_size, **kwargs)
    joinids: list[torch.Tensor] = []

    def stream() -> Iterator[dict]:
        for tensors in datamodule.inference_dataloader():
            joinids.append(tensors.pop(JOINID_KEY))
            yield tensors

    latent = model.get_latent_representation(dataloader=stream())
    ids = torch.cat(joinids).numpy()
    order = np.argsort(ids, kind="stable")
    ids, latent = ids[order], latent[order]
    if len(ids) != datamodule.n_obs or (np.diff(ids) == 0).any():  # ids are sorted
        raise RuntimeError(
            f"the stream from {experiment} returned {len(ids)} cells for {datamodule.n_obs} "
            "selected; nothing was written."
        )
    obs = _obs_of(datamodule, ids)
    out = AnnData(obs=obs, obsm={key: latent.astype(np.float32)})
    out.uns[key] = {"experiment": str(experiment), "n_components": int(model.n_components)}
    return out


def _obs_of(datamodule, ids: np.ndarray) -> pd.DataFrame:
    """``obs`` for the given join ids: indexed by ``obs_id`` where the store has it."""
    has_names = "obs_id" in datamodule.snapshot.obs_columns
    columns = [JOINID_KEY, "obs_id"] if has_names else [JOINID_KEY]
    table = datamodule.query.obs(column_names=columns).concat().to_pandas()
    names = table.set_index(JOINID_KEY).loc[ids, "obs_id"] if has_names else pd.Series(ids)
    obs = pd.DataFrame({JOINID_KEY: ids}, index=names.astype(str).to_numpy())
    obs.index.name = None
    return obs
