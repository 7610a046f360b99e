"""Counts resident on the training device: ``MixSCVI.train(device_data=True)`` and MixSCANVI's.

scvi-tools' default loader reads every minibatch from the AnnData on the host, densifies it and
copies it to the device, once per training step; on a GPU that per-step work, not the
arithmetic, bounds an epoch of a model of scVI's size. :class:`scvi.dataloaders.\
DeviceBackedDataSplitter` copies the training and validation cells to the device once (dense)
and serves minibatches by indexing there. This module builds it from ``train``'s arguments and
refuses, before anything is copied, what it cannot do. MixSCANVI, whose training pairs every
minibatch with one of labelled cells, gets the device-backed form of scvi-tools'
semi-supervised splitter (:mod:`.device_semisupervised`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from scvi.dataloaders import DeviceBackedDataSplitter, SemiSupervisedDataSplitter

from . import _compat
from .device_semisupervised import SemiSupervisedDeviceBackedDataSplitter

# the splitter's own arguments, taken out of ``train``'s keyword arguments
_SPLITTER_ARGS = ("train_size", "validation_size", "shuffle_set_split", "batch_size")
# share of the free memory the dense copy may take: training needs the rest
MAX_SHARE_OF_FREE_MEMORY = 0.5


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the CUDA allocator's view on a GPU, MemAvailable on Linux."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def dense_bytes(model) -> int:
    """Bytes of the dense float32 copy of the model's registered fields, every cell."""
    manager = model.adata_manager
    n_cells = manager.adata.n_obs
    columns = 0
    for key in manager.data_registry:
        array = manager.get_from_registry(key)
        columns += array.shape[1] if getattr(array, "ndim", 1) > 1 else 1
    return n_cells * columns * 4


def device_backed_datamodule(
    model, kwargs: dict
) -> DeviceBackedDataSplitter | SemiSupervisedDeviceBackedDataSplitter:
    """The device-backed datamodule for ``model.train(**kwargs)``.

    scvi-tools' :class:`~scvi.dataloaders.DeviceBackedDataSplitter` for a model trained on one
    minibatch per step (MixSCVI); :class:`.SemiSupervisedDeviceBackedDataSplitter` for one
    trained with labelled minibatches beside (MixSCANVI, whose ``train`` passes
    ``n_samples_per_label`` in ``kwargs``).

    Takes the splitter's arguments (``train_size``, ``validation_size``, ``shuffle_set_split``,
    ``batch_size``, ``datasplitter_kwargs``) out of ``kwargs`` and leaves the trainer's.

    Raises
    ------
    ValueError
        If ``kwargs`` holds a ``datamodule``, ``load_sparse_tensor=True`` or a distributed
        ``strategy``, or if the dense copy would take more than half of the device's free
        memory.
    """
    if kwargs.get("datamodule") is not None:
        raise ValueError(
            "device_data=True builds its own datamodule from the model's AnnData; pass "
            "device_data or datamodule, not both."
        )
    if kwargs.get("load_sparse_tensor"):
        raise ValueError(
            "device_data=True holds the counts dense on the device; load_sparse_tensor is an "
            "option of the host loader: pass one of them."
        )
    if "ddp" in str(kwargs.get("strategy", "")):
        raise ValueError(
            "device_data=True holds every training cell on one device; it cannot be split "
            "between processes (strategy='ddp'): train with the host loader instead."
        )
    splitter_kwargs = {k: kwargs.pop(k) for k in _SPLITTER_ARGS if k in kwargs}
    splitter_kwargs.setdefault("batch_size", 128)
    splitter_kwargs.update(kwargs.pop("datasplitter_kwargs", None) or {})
    kwargs.pop("load_sparse_tensor", None)
    accelerator, device = (
        kwargs.get("accelerator", "auto"),
        _single_device(kwargs.get("devices", "auto")),
    )
    if issubclass(model._data_splitter_cls, SemiSupervisedDataSplitter):
        # SCANVI.train's own default, which it passes to its splitter explicitly
        splitter_kwargs.setdefault("train_size", 0.9)
        splitter = SemiSupervisedDeviceBackedDataSplitter(
            model.adata_manager,
            device=_compat.training_device(accelerator, device),
            n_samples_per_label=kwargs.get("n_samples_per_label"),
            **splitter_kwargs,
        )
    else:
        splitter = DeviceBackedDataSplitter(
            model.adata_manager,
            accelerator=accelerator,
            device=device,
            shuffle=True,  # the splitter's default keeps the cells in order every epoch
            **splitter_kwargs,
        )
    need, free = dense_bytes(model), free_memory_bytes(splitter.device)
    if need > MAX_SHARE_OF_FREE_MEMORY * free:
        n_cells, n_genes = model.adata.n_obs, model.adata.n_vars
        raise ValueError(
            f"device_data=True needs {_size(need)} on {splitter.device} for the dense counts "
            f"({n_cells:,} cells x {n_genes:,} genes), more than half of the {_size(free)} free "
            "there; train without device_data (the host loader) or "
            "on fewer genes."
        )
    return splitter


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.2f} MB"


def _single_device(devices):
    """``devices`` as the splitter's ``device``: one device, as scvi-tools' own device-backed
    training (``PyroSviTrainMixin``) takes it."""
    if isinstance(devices, list | tuple):
        if len(devices) != 1:
            raise ValueError(
                f"device_data=True trains on one device; got devices={devices!r}: pass one."
            )
        return devices[0]
    return devices
