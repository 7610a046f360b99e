"""What every scmixvae model class adds to its scvi-tools base: the mixture's API.

:class:`MixtureModelMixin` holds the methods that :class:`~scmixvae.MixSCVI` and
:class:`~scmixvae.MixSCANVI` share: training with the NaN and resume guards, atomic saving,
loading with a gene check, scArches query mapping of the mixture encoders, minification of
every component's posterior, the latent representation per component, the held-out likelihood
with the mixture as proposal, and the per-cell mixture diagnostics. It goes first among the
bases, so its methods take the place of scvi-tools' and call them through ``super()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi.data._constants import ADATA_MINIFY_TYPE
from scvi.model.base import BaseModelClass
from scvi.module._constants import MODULE_KEYS

from scmixvae.guards import NonFiniteLossGuard, RNGStateCheckpoint
from scmixvae.mixture import MixtureNormal, NLLEstimator

from . import _compat
from .arches import freeze_mixture_encoder_for_query
from .device_data import device_backed_datamodule
from .mixture_diagnostics import MixtureDiagnosticsMixin
from .module import mixture_from_flat
from .pseudo_inputs import restoring_weights
from .safety import (
    atomic_save_dir,
    check_prior_state,
    check_same_genes,
    check_shared_encoder_layout,
    init_param,
)
from .validation import check_counts

logger = logging.getLogger(__name__)

ComponentSelection = int | Literal["all"] | None


def _refuse_datamodule_reference(reference_model) -> None:
    """Refuse scArches mapping onto a reference trained from a datamodule (a SOMA store)."""
    if isinstance(reference_model, str | Path):
        if not (Path(reference_model) / "model.pt").is_file():
            return  # scvi-tools names the missing file
        registry = BaseModelClass.load_registry(str(reference_model))
    else:
        registry = getattr(reference_model, "registry", None) or {}
    if registry.get("setup_method_name") == "setup_datamodule":
        raise ValueError(
            "query mapping onto a reference trained from a datamodule (a SOMA store) is not "
            "supported: scvi-tools 1.4 rebuilds such a module with the reference's batches only. "
            "Train the reference from an AnnData (backed='r' for one larger than memory)."
        )


class MixtureModelMixin(MixtureDiagnosticsMixin):
    """The mixture posterior's methods, shared by every scmixvae model class."""

    def __repr__(self) -> str:
        # scvi-tools prints and returns ""; a string works in print(), logs and notebooks alike
        return self.summary_string

    @property
    def n_components(self) -> int:
        """Number of mixture components ``S``."""
        # The constructor's record first: scvi-tools' own tests wrap the module in a Mock,
        # whose attributes are Mocks, not the module's settings.
        if "n_components" in getattr(self, "_module_kwargs", {}):
            return int(self._module_kwargs["n_components"])
        return self.module.n_components

    def _setting(self, name: str, default):
        """A constructor argument as recorded in ``init_params_`` (not read off the module)."""
        return init_param(getattr(self, "init_params_", {}), name, default)

    def train(
        self,
        *args,
        callbacks: list | None = None,
        device_data: bool = False,
        **kwargs,
    ):
        """Train with scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`.

        Every argument of ``SCVI.train`` works (``max_epochs``, ``batch_size``,
        ``early_stopping``, ``plan_kwargs``, ``accelerator``, ``devices``, ``strategy``,
        ``datamodule``, ...), plus Lightning's ``ckpt_path`` to resume from a checkpoint (pass a
        :class:`~lightning.pytorch.callbacks.ModelCheckpoint` in ``callbacks`` to write them).
        Two guards are added: checkpoints also hold the random-number generators, so a resumed
        run continues exactly as the uninterrupted one would; and a NaN or infinite loss stops
        training, restores the weights of the last complete epoch and raises
        :class:`~scmixvae.guards.TrainingDivergedError`.

        ``device_data=True`` copies the training and validation cells to the training device
        once, dense, and draws every minibatch there (scvi-tools'
        :class:`~scvi.dataloaders.DeviceBackedDataSplitter`; for MixSCANVI its labelled
        minibatches too, with the device-backed form of scvi-tools' semi-supervised splitter in
        :mod:`scmixvae.singlecell.device_semisupervised`): no per-step read, densification and
        host-to-device copy. It is for GPUs, where that copy bounds an epoch; it is refused
        with a one-line error when the dense counts would take more than half of the device's
        free memory, with a ``datamodule``, ``load_sparse_tensor=True`` or ``strategy="ddp"``.
        The training/validation split is the host loader's (the same cells for the same seed);
        the minibatches are drawn in another order, so the weights differ as between seeds.
        """
        if self.minified_data_type is not None:
            raise ValueError(
                "this model's AnnData is minified: it holds the stored posterior, not the counts, "
                "so there is nothing to train on. Train on the full AnnData (MixSCVI.load(..., "
                "adata=full)) and minify afterwards."
            )
        if device_data:
            if args:
                raise ValueError(
                    "with device_data=True pass train's arguments by keyword (max_epochs=..., "
                    "batch_size=...), so that the data options reach the device loader."
                )
            kwargs["datamodule"] = device_backed_datamodule(self, kwargs)
        guard = NonFiniteLossGuard()
        callbacks = _compat.with_checkpoint_support(list(callbacks or []))
        callbacks += [guard, RNGStateCheckpoint()]
        result = super().train(*args, callbacks=callbacks, **kwargs)
        guard.raise_if_diverged()
        return result

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """Save the model like scvi-tools does, atomically.

        Files are written to a temporary directory beside ``dir_path`` and moved into place
        one by one, so a crash or a full disk during the save leaves the previous model
        loadable. The saved model holds the weights, the setup arguments and the gene names,
        never the data (unless ``save_anndata=True``). Arguments as
        :meth:`scvi.model.SCVI.save`; a model trained from a datamodule (a SOMA store) is saved
        with the datamodule it was last trained with unless ``datamodule=`` names another.
        """
        if self.registry.get("setup_method_name") == "setup_datamodule":
            trainer = getattr(self, "trainer", None)  # Lightning keeps the datamodule it fit
            kwargs.setdefault("datamodule", getattr(trainer, "datamodule", None))
            if kwargs["datamodule"] is None:
                raise ValueError(
                    "this model was set up from a datamodule: pass datamodule=... to save() "
                    "(scvi-tools stores its batch and label mappings)."
                )
        atomic_save_dir(
            lambda tmp: super(MixtureModelMixin, self).save(
                tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs
            ),
            dir_path,
            overwrite,
        )

    @classmethod
    def load(
        cls, dir_path: str, adata: AnnData | None = None, prefix: str | None = None, **kwargs
    ):
        """Load a saved model, checking that ``adata`` has exactly the genes it was trained on.

        Other problems (a missing folder, a pre-1.0 scvi-tools save, another model class) get
        scvi-tools' own errors.

        Raises
        ------
        GeneMismatchError
            If ``adata``'s genes (or their order) differ from the saved model's.
        ValueError
            If the model was saved with the shared encoder of scmixvae 0.1.0.
        """
        path = Path(dir_path) / f"{prefix or ''}model.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            check_shared_encoder_layout(saved, dir_path)
            check_prior_state(saved, dir_path)
            if isinstance(adata, AnnData):  # adata=False: a model of a datamodule (scvi-tools)
                check_same_genes(
                    saved["var_names"], adata.var_names, f"the model saved in {dir_path}"
                )
            registry = saved.get("attr_dict", {}).get("registry_", {})
            from_datamodule = registry.get("setup_method_name") == "setup_datamodule"
            if from_datamodule and not isinstance(adata, AnnData):
                return _compat.load_datamodule_model(cls, saved, kwargs.get("datamodule"))
        with restoring_weights():  # the saved state holds the learned pseudo-inputs
            return super().load(dir_path, adata=adata, prefix=prefix, **kwargs)

    @classmethod
    def load_query_data(cls, adata: AnnData | None = None, reference_model=None, **kwargs):
        """Map a query onto a trained reference with scArches (scvi-tools' ``load_query_data``).

        Every option of :meth:`scvi.model.SCVI.load_query_data` works (``freeze_expression``,
        ``freeze_batchnorm_encoder``, ``freeze_dropout``, ``unfrozen``, ...). New batch
        categories get their own weights; training the returned model updates only what
        scArches updates: the new categories' weights (in the decoder, and in the encoders when
        the reference was trained with ``encode_covariates=True``) and the library encoder.
        The mixture's own encoder layers follow the same rules as scVI's.

        The latent prior and flow are the reference's and stay frozen (unless ``unfrozen``):
        a VampPrior's pseudo-inputs keep their reference batch covariates, so the query's
        cells are mapped under the reference's prior.
        """
        _refuse_datamodule_reference(reference_model)
        with restoring_weights():
            model = super().load_query_data(adata, reference_model, **kwargs)
        if not kwargs.get("unfrozen", False):
            freeze_mixture_encoder_for_query(
                model.module.z_encoder,
                freeze_expression=kwargs.get("freeze_expression", True),
                freeze_batchnorm_encoder=kwargs.get("freeze_batchnorm_encoder", True),
            )
            for part in (model.module.prior, model.module.flow):
                for parameter in part.parameters() if part is not None else ():
                    parameter.requires_grad_(False)
        return model

    def _check_if_trained(self, warn: bool = True, message: str | None = None):
        _compat.refuse_scanvi_conversion(message)
        if message is None:
            return super()._check_if_trained(warn=warn)
        return super()._check_if_trained(warn=warn, message=message)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None and self.adata is not None and adata is not self.adata:
            check_same_genes(self.adata.var_names, adata.var_names, "the model's training genes")
            is_new = self.get_anndata_manager(adata) is None
            if is_new and _compat.minify_type(adata) is None:  # a new AnnData: check its counts
                layer = self.adata_manager.registry["setup_args"].get("layer")
                check_counts(
                    _compat.count_matrix(adata, layer),
                    where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
                )
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def minify_adata(
        self,
        minified_data_type: str = ADATA_MINIFY_TYPE.LATENT_POSTERIOR,
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Minify the model's AnnData to the stored posterior, as :meth:`SCVI.minify_adata`.

        A mixture posterior needs every component: the means and variances of all ``S``
        components are computed here and stored, component-major, as
        ``adata.obsm[use_latent_qzm_key]`` and ``adata.obsm[use_latent_qzv_key]``, each of
        shape ``(n_cells, S * n_latent)`` (columns ``s * n_latent`` to ``(s + 1) * n_latent - 1``
        are component ``s``), then registered as scvi-tools does. The latent representation,
        normalised expression and differential expression then work without the counts.
        """
        loc, var = self._base_components()
        self.adata.obsm[use_latent_qzm_key] = loc.reshape(loc.shape[0], -1)
        self.adata.obsm[use_latent_qzv_key] = var.reshape(var.shape[0], -1)
        super().minify_adata(minified_data_type, use_latent_qzm_key, use_latent_qzv_key)

    # ------------------------------------------------------------------------------------------
    def _minibatches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        if dataloader is not None:
            return dataloader
        adata = self._validate_anndata(adata)
        return self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)

    def _posterior(self, outputs: dict) -> MixtureNormal:
        """The mixture posterior from inference outputs (``qz``, or scvi-tools' legacy
        ``qzm`` / ``qzv``: the flat components, or one Gaussian)."""
        if MODULE_KEYS.QZ_KEY in outputs:
            return outputs[MODULE_KEYS.QZ_KEY]
        qzm, qzv = outputs[MODULE_KEYS.QZM_KEY], outputs[MODULE_KEYS.QZV_KEY]
        if qzm.shape[-1] == self._setting("n_latent", 10):
            return MixtureNormal(qzm.unsqueeze(0), qzv.sqrt().unsqueeze(0))
        return mixture_from_flat(qzm, qzv, self.n_components)

    @torch.inference_mode()
    def _mixtures(self, adata, indices, batch_size, dataloader=None):
        """Yield ``(tensors, qz)`` per minibatch, in eval mode."""
        self._check_if_trained(warn=False)
        self.module.eval()
        for tensors in self._minibatches(adata, indices, batch_size, dataloader):
            inputs = self.module._get_inference_input(tensors)
            yield tensors, self._posterior(self.module.inference(**inputs))

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
        component: ComponentSelection = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        r"""Latent representation of each cell.

        Parameters
        ----------
        adata, indices, batch_size, dataloader
            As :meth:`scvi.model.SCVI.get_latent_representation`.
        give_mean
            Return means; ``False`` returns one draw from the selected distribution.
        mc_samples
            Draws averaged for the mean of a ``latent_distribution="ln"`` model, as SCVI.
        return_dist
            Return ``(mean, variance)`` of the Gaussian latent instead of the mean.
        component
            ``None``: the mixture (mean of the component means; variance by the law of total
            variance). ``k``: component ``k`` alone. ``"all"``: every component, arrays of shape
            ``(n_cells, S, n_latent)``.

        Returns
        -------
        ``(n_cells, n_latent)`` (``(n_cells, S, n_latent)`` for ``component="all"``), or a
        ``(mean, variance)`` pair.

        Notes
        -----
        With a latent flow (``flow_steps > 0``) the latent is :math:`z = f(z_0)`, ``z_0`` from
        the mixture. The mean returned is then the flow applied to the mixture's mean,
        :math:`f(\mathbb{E}[z_0])` (per component: :math:`f` of its mean), a deterministic
        point in the space the decoder reads, not :math:`\mathbb{E}[z]` (which has no closed
        form); draws (``give_mean=False``) are flowed draws. The variances are the base
        mixture's, before the flow.
        """
        self._check_component(component)
        flow = self.module.flow_latent

        def transform(z: torch.Tensor) -> torch.Tensor:
            return self.module._z_transformation(flow(z))

        means, variances = [], []
        for _, qz in self._mixtures(adata, indices, batch_size, dataloader):
            if component is None:
                mean, var = flow(qz.loc), qz.variance
                ln = self._setting("latent_distribution", "normal") == "ln"
                if ln and give_mean and not return_dist:
                    mean = transform(qz.sample_mixture(mc_samples)).mean(0)
                draw = transform(qz.sample_mixture(())) if not give_mean else None
            elif component == "all":
                mean, var = (
                    flow(qz.component_loc).transpose(0, 1),
                    qz.component_scale.square().transpose(0, 1),
                )
                draw = transform(qz.rsample(()).transpose(0, 1)) if not give_mean else None
            else:
                mean = flow(qz.component_loc[component])
                var = qz.component_scale[component].square()
                draw = transform(qz.component(component).sample()) if not give_mean else None
            means.append((mean if give_mean or return_dist else draw).cpu())
            variances.append(var.cpu())
        mean = torch.cat(means).numpy()
        if return_dist:
            return mean, torch.cat(variances).numpy()
        return mean

    def _base_components(
        self, adata=None, indices=None, batch_size=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every component's mean and variance before any flow, ``(n_cells, S, n_latent)``."""
        locs, variances = [], []
        for _, qz in self._mixtures(adata, indices, batch_size):
            locs.append(qz.component_loc.transpose(0, 1).cpu())
            variances.append(qz.component_scale.square().transpose(0, 1).cpu())
        return torch.cat(locs).numpy(), torch.cat(variances).numpy()

    def _check_component(self, component: ComponentSelection) -> None:
        if component is None or component == "all":
            return
        if not isinstance(component, int | np.integer) or not 0 <= component < self.n_components:
            raise ValueError(
                f"component must be None, 'all' or an integer in [0, {self.n_components}), "
                f"got {component!r}."
            )

    @torch.inference_mode()
    def get_elbo(self, *args, **kwargs):
        """The model's bound on the data, from draws of every component (scvi-tools' API).

        Arguments and return type as :meth:`scvi.model.SCVI.get_elbo`. Unlike training steps
        with ``n_sampled_components``, every component draws here, so the estimate has no
        component-sampling noise.
        """
        kwargs.setdefault("inference_kwargs", {"n_sampled_components": None})
        return super().get_elbo(*args, **kwargs)

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1_000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterator[dict[str, torch.Tensor]] | None = None,
        estimator: NLLEstimator = "mixture",
        n_mc_samples_per_pass: int | None = None,
        **kwargs,
    ) -> np.float64 | torch.Tensor:
        """Importance-sampled marginal log-likelihood with the mixture as proposal.

        Parameters
        ----------
        n_mc_samples
            Total importance samples per cell, split evenly over the components.
        estimator
            ``"mixture"`` (default): one log-mean-exp over all draws, the tighter estimate.
            ``"per_component"``: mean over components of each one's log-mean-exp, as in the
            method's reference code.
        n_mc_samples_per_pass
            Draws per component per forward pass; by default sized to keep a pass under ~1 GB.
        **kwargs
            Other arguments of :meth:`scvi.model.SCVI.get_marginal_ll`.

        Returns
        -------
        The mean over cells as a :class:`numpy.float64` (higher is better), as SCVI, or a tensor
        per cell with ``return_mean=False``. Unlike scvi-tools 1.4, the mean is over cells, not
        over minibatch means. It decodes ``n_mc_samples`` draws per cell: on large data, pass
        ``indices`` (a subset of cells) for a quick estimate.
        """
        self.module.eval()
        per_cell = super().get_marginal_ll(
            adata=adata,
            indices=indices,
            n_mc_samples=n_mc_samples,
            batch_size=batch_size,
            return_mean=False,
            dataloader=dataloader,
            estimator=estimator,
            n_mc_samples_per_pass=n_mc_samples_per_pass,
            **kwargs,
        )
        # scvi-tools averages per-minibatch means, which over-weights a short last minibatch
        return np.float64(per_cell.mean()) if return_mean else per_cell
