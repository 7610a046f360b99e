"""Labelled and unlabelled cells resident on the training device: MixSCANVI's ``device_data``.

scANVI trains on pairs of minibatches: one of all training cells, one of the labelled cells
(scvi-tools' :class:`~scvi.dataloaders.SemiSupervisedDataLoader`, which cycles the labelled
batches while the full ones run through an epoch, and with ``n_samples_per_label`` draws up to
that many cells of each label afresh every epoch). scvi-tools has no device-backed form of it;
:class:`SemiSupervisedDeviceBackedDataSplitter` makes the same split as scvi-tools'
:class:`~scvi.dataloaders.SemiSupervisedDataSplitter` (it is one), copies each set to the device
once, dense, and serves the same pairs by indexing there: no per-step host work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import AnnDataLoader, SemiSupervisedDataSplitter

Tensors = dict[str, torch.Tensor]


class SemiSupervisedDeviceBatches:
    """Minibatches of one set of cells held on the device, paired as scANVI trains on them.

    Each item is ``[full, labelled]`` (dicts of tensors): ``full`` runs through every cell of
    the set once per pass; ``labelled`` cycles through the labelled cells (the batches of one
    pass over them, repeated in the same order, as ``itertools.cycle`` does in scvi-tools'
    loader). A set without labelled cells yields the ``full`` dicts alone.

    Parameters
    ----------
    tensors
        The set's registered fields, every cell, on the device.
    per_label
        For each label, the positions (in ``tensors``) of its cells; empty for no labels.
    batch_size
        Cells per minibatch.
    shuffle
        Draw a new order every pass (training) or keep the stored one (validation).
    n_samples_per_label
        Up to this many cells of each label per pass, drawn again by :meth:`resample_labels`
        (scvi-tools' ``SubSampleLabels`` callback calls it at every epoch start); ``None``: all.
    drop_last
        Leave out the last ``full`` minibatch when it is smaller than ``batch_size``.
    """

    def __init__(
        self,
        tensors: Tensors,
        per_label: list[torch.Tensor],
        batch_size: int,
        shuffle: bool,
        n_samples_per_label: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.tensors = tensors
        self.per_label = per_label
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.n_samples_per_label = n_samples_per_label
        self.n_cells = next(iter(tensors.values())).shape[0]
        self.n_batches = (
            self.n_cells // batch_size if drop_last else math.ceil(self.n_cells / batch_size)
        )
        self.resample_labels()

    def resample_labels(self) -> None:
        """Draw the labelled cells of the coming passes, as scvi-tools' ``subsample_labels``."""
        if not self.per_label:
            self.labelled = None
            return
        n = self.n_samples_per_label
        # a subsample is drawn at random in validation too, as scvi-tools draws it
        parts = [
            positions if n is None or len(positions) < n
            else positions[torch.randperm(len(positions), device=positions.device)[:n]]
            for positions in self.per_label
        ]  # fmt: skip
        self.labelled = torch.cat(parts)

    def _order(self, n: int) -> torch.Tensor:
        device = next(iter(self.tensors.values())).device
        if self.shuffle:
            return torch.randperm(n, device=device)
        return torch.arange(n, device=device)

    def _take(self, positions: torch.Tensor) -> Tensors:
        return {key: value[positions] for key, value in self.tensors.items()}

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[Tensors | list[Tensors]]:
        size = self.batch_size
        order = self._order(self.n_cells)
        starts = range(0, self.n_batches * size, size)
        if self.labelled is None:
            for start in starts:
                yield self._take(order[start : start + size])
            return
        labelled = self.labelled[self._order(len(self.labelled))]
        n_labelled_batches = math.ceil(len(labelled) / size)
        for step, start in enumerate(starts):
            first = (step % n_labelled_batches) * size
            yield [
                self._take(order[start : start + size]),
                self._take(labelled[first : first + size]),
            ]


class SemiSupervisedDeviceBackedDataSplitter(SemiSupervisedDataSplitter):
    """scvi-tools' semi-supervised split, with every set resident on ``device``.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    device
        The training device.
    batch_size
        Cells per minibatch.
    **kwargs
        :class:`~scvi.dataloaders.SemiSupervisedDataSplitter`'s arguments (``train_size``,
        ``validation_size``, ``shuffle_set_split``, ``n_samples_per_label``, ``drop_last``).
        Options of the host ``DataLoader`` (workers, pinned memory) have nothing to act on.
    """

    def __init__(self, adata_manager, device: torch.device, batch_size: int = 128, **kwargs):
        # the batch size goes to the parent too: its split avoids a last batch of one cell
        super().__init__(adata_manager, batch_size=batch_size, **kwargs)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._resident: dict[str, tuple[Tensors, list[torch.Tensor]] | None] = {}

    def setup(self, stage: str | None = None) -> None:
        """The host splitter's train/validation/test indices, each set copied to the device."""
        super().setup(stage)
        labels = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        unlabelled_code = list(labels.categorical_mapping).index(labels.unlabeled_category)
        for name, indices in (("train", self.train_idx), ("val", self.val_idx),
                              ("test", self.test_idx)):  # fmt: skip
            self._resident[name] = self._copy(indices, unlabelled_code)

    def _copy(self, indices, unlabelled_code: int) -> tuple[Tensors, list[torch.Tensor]] | None:
        if len(indices) == 0:
            return None
        loader = AnnDataLoader(self.adata_manager, indices=indices, batch_size=len(indices),
                               shuffle=False)  # fmt: skip
        tensors = {key: value.to(self.device) for key, value in next(iter(loader)).items()}
        codes = tensors[REGISTRY_KEYS.LABELS_KEY].ravel().long()
        per_label = [
            torch.nonzero(codes == code).ravel()
            for code in torch.unique(codes).tolist()
            if code != unlabelled_code
        ]
        return tensors, per_label

    def _batches(
        self, name: str, shuffle: bool, drop_last: bool = False
    ) -> SemiSupervisedDeviceBatches | None:
        resident = self._resident.get(name)
        if resident is None:
            return None
        tensors, per_label = resident
        return SemiSupervisedDeviceBatches(tensors, per_label, self.batch_size, shuffle,
                                           self.n_samples_per_label, drop_last)  # fmt: skip

    def train_dataloader(self) -> SemiSupervisedDeviceBatches | None:
        """The training pairs, in a new order every epoch."""
        return self._batches("train", shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> SemiSupervisedDeviceBatches | None:
        """The validation pairs, in a fixed order (as the host splitter)."""
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> SemiSupervisedDeviceBatches | None:
        """The test pairs, in a fixed order."""
        return self._batches("test", shuffle=False)
