"""The cookbook benchmark: recipe model codes, pseudo-inputs from training cells, the summary."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scvi
import torch

from benchmarks._models import ModelSpec
from benchmarks.cookbook import summary as cookbook


@pytest.mark.parametrize(
    ("code", "name", "kwargs"),
    [
        ("S5:vamp", "MixSCVI(S=5, prior=vamp)", {"prior": "vamp", "n_prior_components": 5}),
        ("S1:vamp50:F2", "MixSCVI(S=1, prior=vamp K=50, flow=2)",
         {"prior": "vamp", "n_prior_components": 50, "flow_steps": 2}),
        ("S5:mog10", "MixSCVI(S=5, prior=mog K=10)", {"prior": "mog", "n_prior_components": 10}),
        ("S5:shared:A1:F3", "MixSCVI(S=5, shared, A=1, flow=3)", {"flow_steps": 3}),
        ("S5", "MixSCVI(S=5)", {}),
    ],
)  # fmt: skip
def test_recipe_codes(code, name, kwargs):
    spec = ModelSpec.parse(code)
    assert ModelSpec.parse(spec.code) == spec
    assert spec.name == name and spec.recipe_kwargs == kwargs
    assert spec.has_image_form == (not kwargs and code == "S5")


def test_an_unnumbered_prior_keeps_the_stored_reports_k_when_the_library_default_moves(
    monkeypatch,
):
    from scmixvae.singlecell import module_priors

    monkeypatch.setattr(module_priors, "DEFAULT_N_PRIOR_COMPONENTS", 300)
    spec = ModelSpec.parse("S1:mog")
    assert spec.recipe_kwargs["n_prior_components"] == 5
    chosen = ModelSpec.parse("S1:vamp")._pseudo_input_kwargs(np.arange(1000))
    assert len(chosen["pseudoinputs_data_indices"]) == 5


def test_sysvi_and_unknown_recipe_codes():
    with pytest.raises(ValueError, match="unknown option"):
        ModelSpec.parse("S5:laplace")
    with pytest.raises(ValueError, match="SysVI takes no options"):
        ModelSpec.parse("sysvi:L2")
    sysvi = ModelSpec.parse("sysvi")
    assert sysvi.code == "sysvi" and sysvi.name == "SysVI(prior=vamp)"


def test_pseudo_inputs_start_on_training_cells_only():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(60, 20)).astype(np.float32)
    counts[:, 0] = np.arange(60)  # makes every cell recognisable
    training = np.arange(40, 60)
    scvi.settings.seed = 3
    model = ModelSpec.parse("S1:vamp4").build(ad.AnnData(counts), pseudo_input_cells=training)
    cells = torch.expm1(model.module.prior.pseudo_inputs.detach()[:, 0]).round().long()
    assert len(cells) == 4 and set(cells.tolist()) <= set(training.tolist())


def _row(model_code: str, seed: int, ll: float, nmi: float) -> dict:
    spec = ModelSpec.parse(model_code)
    return {"model": spec.name, "code": spec.code, "seed": seed, "heldout_marginal_ll": ll,
            "leiden_nmi_mean": nmi, "kmeans_nmi_mean": nmi, "epochs": 700 + seed,
            "stopped_early": seed > 0}  # fmt: skip


def test_summary_pairs_by_seed_and_corrects_each_column(tmp_path):
    rows = []
    for seed in range(3):
        rows += [
            _row("scvi", seed, -100.0 + seed, 0.70),
            _row("scvi:L2", seed, -98.0 + seed, 0.69),
            _row("S1:vamp", seed, -96.0 + seed + 0.1 * seed, 0.72),
            _row("S5:vamp", seed, -95.5 + seed, 0.72 + 0.01 * seed),
        ]
    report = {"rows": rows[:8], "unreported_rows": []}  # seeds 0-1 in the report
    (tmp_path / "singlecell_toy.json").write_text(json.dumps(report))
    (tmp_path / ".progress").mkdir()
    (tmp_path / ".progress" / "singlecell_toy_x.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows[8:])  # seed 2 from a run still going
    )
    codes = ["scvi", "scvi:L2", "S1:vamp", "S5:vamp"]
    cookbook.main(["--datasets", "toy", "--out", str(tmp_path), "--models", *codes])
    summary = json.loads((tmp_path / "summary.json").read_text())["toy"]
    by_code = {line["code"]: line for line in summary}
    vamp = by_code["S1:vamp"]
    assert vamp["n_seeds"] == 3 and vamp["stopped_early"] == "2/3" and vamp["epochs"] == 701
    assert vamp["ll_vs_scvi_l2"]["minus"] == pytest.approx(2.1)  # 2 + 0.1 * mean(seed)
    assert vamp["ll_vs_scvi_l2"]["better"] == "3/3"
    assert by_code["S5:vamp"]["s5_vs_s1"]["minus"] == pytest.approx(0.4)
    assert by_code["scvi"]["ll_vs_scvi"] is None  # the baseline is not tested against itself
    # Holm over the column: two recipes and the deeper SCVI tested against SCVI
    tested = [by_code[c]["ll_vs_scvi"] for c in ("scvi:L2", "S1:vamp", "S5:vamp")]
    finite = [t for t in tested if np.isfinite(t["p"])]
    assert all(t["holm"] >= t["p"] for t in finite)
    assert (tmp_path / "summary.md").read_text().count("| MixSCVI") == 2
    assert (tmp_path / "summary.png").stat().st_size > 0
