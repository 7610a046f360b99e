"""The single-cell benchmark harness runs end to end on a tiny configuration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks._models import ModelSpec
from benchmarks._paired import holm
from benchmarks.cost import epoch_time as cost
from benchmarks.singlecell.protocol import _reusable_rows, main
from benchmarks.singlecell.report import (
    METRICS,
    _paired_metric_lines,
    _paired_test_lines,
    model_family,
    paired_metric_tests,
    paired_tests,
    with_paired_differences,
)

TINY = ["--datasets", "sorted_pbmc", "--components", "1", "2", "--seeds", "0",
        "--max-epochs", "1", "--max-cells", "300", "--n-genes", "200",
        "--n-mc-samples", "10", "--batch-size", "128"]  # fmt: skip


def test_harness_end_to_end(tmp_path, data_dir):
    (payload,) = main([*TINY, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "singlecell_sorted_pbmc.json").read_text())
    assert saved["split"] == payload["split"] and sum(saved["split"].values()) == 300
    models = set(saved["summary"])
    assert models == {"MixSCVI(S=1)", "MixSCVI(S=2)", "MixSCVI(S=2, ensemble)", "SCVI"}
    for row in saved["rows"]:
        assert row["epochs"] == 1 and row["wall_seconds"] > 0
        assert (row["kind"] == "scvi") == ("jsd" not in row)
        for key in ("kmeans_ari_mean", "svm_accuracy_concat", "heldout_marginal_ll"):
            assert math.isfinite(row[key])
        assert -1 <= row["silhouette_mean"] <= 1
    assert saved["summary"]["SCVI"]["epoch_time_vs_scvi"] == 1.0
    assert saved["summary"]["SCVI"]["heldout_ll_minus_scvi"] == 0.0
    mixture = saved["summary"]["MixSCVI(S=2)"]
    difference = mixture["heldout_marginal_ll"] - saved["summary"]["SCVI"]["heldout_marginal_ll"]
    assert math.isclose(mixture["heldout_ll_minus_scvi"], difference, rel_tol=1e-9)
    command = f"python -m benchmarks.singlecell {' '.join(TINY)} --out {tmp_path}"
    assert f"Command: `{command}`" in (tmp_path / "singlecell_sorted_pbmc.md").read_text()
    markdown = (tmp_path / "singlecell_sorted_pbmc.md").read_text()
    assert "| MixSCVI(S=2, ensemble) |" in markdown and "kmeans_ari_mean" in markdown
    assert (tmp_path / "singlecell_sorted_pbmc_metrics.png").stat().st_size > 0
    assert (tmp_path / "singlecell_sorted_pbmc_umap.png").stat().st_size > 0


def test_model_list_and_likelihood_curve(tmp_path, data_dir):
    args = ["--datasets", "sorted_pbmc", "--models", "scvi", "S3:shared:A1", "--seeds", "0",
            "--max-epochs", "3", "--patience", "0", "--max-cells", "300", "--n-genes", "100",
            "--n-mc-samples", "10", "--batch-size", "128", "--curve-models", "S3:shared:A1",
            "--curve-every", "2", "--curve-samples", "6", "--out", str(tmp_path)]  # fmt: skip
    (payload,) = main(args)
    rows = {r["model"]: r for r in payload["rows"]}
    assert set(rows) == {"SCVI", "MixSCVI(S=3, shared, A=1)"}
    mixture = rows["MixSCVI(S=3, shared, A=1)"]
    assert mixture["epochs"] == 3 and not mixture["stopped_early"]  # --patience 0: fixed epochs
    curve = mixture["ll_curve"]
    assert [p["epoch"] for p in curve] == [1, 2]
    assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"] <= mixture["wall_seconds"]
    assert all(math.isfinite(p["heldout_marginal_ll"]) for p in curve)
    assert "ll_curve" not in rows["SCVI"]
    assert (tmp_path / "singlecell_sorted_pbmc_ll_vs_time.png").stat().st_size > 0
    # a resumed run keeps curve rows only where the curve is still asked for and present
    (again,) = main([*args, "--resume"])
    assert again["rows"] == payload["rows"]


def test_resume_reuses_finished_rows_only_with_the_same_settings(tmp_path, data_dir):
    (first,) = main([*TINY, "--out", str(tmp_path)])
    (resumed,) = main([*TINY, "--out", str(tmp_path), "--resume"])
    # Retraining would give new wall times, so equal rows mean they were reused.
    assert resumed["rows"] == first["rows"]

    # --report-only trains nothing: a model without finished rows is left out of the report
    (reported,) = main([*TINY, "--models", "scvi", "S2", "S3", "--out", str(tmp_path),
                        "--report-only"])  # fmt: skip
    by_name = {r["model"]: r for r in first["rows"]}
    assert reported["rows"] == [by_name["SCVI"], by_name["MixSCVI(S=2)"]]
    assert reported["summary"]["SCVI"]["n_seeds"] == 1
    assert len(reported["unreported_rows"]) == 2  # kept in the JSON for a later --resume
    report = (tmp_path / "singlecell_sorted_pbmc.md").read_text()
    assert "| model | n_seeds | heldout_marginal_ll |" in report
    assert "| MixSCVI(S=3) |" not in report
    with pytest.raises(FileNotFoundError, match="report-only"):  # no rows with these settings
        main([*TINY, "--max-epochs", "2", "--out", str(tmp_path), "--report-only"])
    with pytest.raises(SystemExit):  # no SCVI to pair with: refused before reading any row
        main([*TINY, "--models", "S2", "--out", str(tmp_path), "--report-only"])

    class Args:
        split_seed, n_genes, max_cells, max_epochs, patience = 0, 200, 300, 1, 20
        batch_size, n_mc_samples, seeds, ll_seeds = 128, 10, [0], None
        kl_warmup_epochs, curve_models = 400, None

    stem = tmp_path / "singlecell_sorted_pbmc"
    assert len(_reusable_rows(stem, Args)) == len(first["rows"])
    # Rows without the likelihood are only reused where the likelihood is not asked for.
    saved = json.loads(stem.with_suffix(".json").read_text())
    for row in saved["rows"] + saved["unreported_rows"]:
        del row["heldout_marginal_ll"]
    stem.with_suffix(".json").write_text(json.dumps(saved))
    for log in (tmp_path / ".progress").iterdir():
        log.unlink()
    assert _reusable_rows(stem, Args) == []  # ll_seeds None: every seed needs it
    Args.ll_seeds = [1]
    assert len(_reusable_rows(stem, Args)) == len(first["rows"])
    Args.kl_warmup_epochs = 20  # a different objective schedule trained other models
    assert _reusable_rows(stem, Args) == []
    Args.kl_warmup_epochs, Args.n_mc_samples = 400, 20  # a different likelihood budget
    assert _reusable_rows(stem, Args) == []


def test_cost_harness_end_to_end(tmp_path):
    args = ["--cells", "300", "--models", "scvi", "S2", "S4:shared:A1", "--epochs", "2",
            "--min-steps", "2", "--batch-size", "128", "--repeats", "2",
            "--out", str(tmp_path)]  # fmt: skip
    rows = cost.main(args)
    assert [r["model"] for r in rows] == ["SCVI", "MixSCVI(S=2)", "MixSCVI(S=4, shared, A=1)"]
    assert all(len(r["repeat_seconds_per_epoch"]) == 2 for r in rows)
    saved = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert saved[0]["epoch_time_vs_scvi"] == 1.0 and saved[0]["rss_increase_vs_scvi"] == 1.0
    mixture = saved[1]
    assert mixture["n_parameters"] > saved[0]["n_parameters"]
    assert len(mixture["epoch_seconds"]) == 2 and mixture["seconds_per_epoch"] > 0
    assert mixture["peak_rss_gb_training"] >= mixture["rss_gb_with_data"] > 0
    assert "| 300 | MixSCVI(S=2) |" in (tmp_path / "cost.md").read_text()
    assert (tmp_path / "cost.png").stat().st_size > 0


def _fail_after_first_run(monkeypatch, module, row: dict) -> None:
    """Make the cost script's first child print ``row`` and every later one fail."""
    import subprocess

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if len(calls) == 1:
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(row), stderr="")
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="killed")

    monkeypatch.setattr(module.subprocess, "run", fake_run)


def test_cost_reports_keep_the_runs_finished_before_a_failure(tmp_path, monkeypatch):
    """A cost run cut short (a timeout on a lent GPU) still leaves the models it measured."""
    from benchmarks.images import cost as image_cost

    sc_row = {"model": "SCVI", "code": "scvi", "n_cells": 300, "n_parameters": 10,
              "seconds_per_epoch": 0.5, "peak_rss_gb_training": 1.0, "device": "test GPU",
              "training_rss_increase_gb": 0.1, "gpu_peak_gb": 0.2}  # fmt: skip
    _fail_after_first_run(monkeypatch, cost, sc_row)
    with pytest.raises(SystemExit):
        cost.main(["--cells", "300", "--models", "scvi", "S2", "--out", str(tmp_path)])
    report = (tmp_path / "cost.md").read_text()
    assert "| 300 | SCVI | 10 | 0.500 | 1.00x |" in report and "S=2" not in report
    assert "idle test GPU" in report and "GPU peak (GB)" in report

    image_row = {"model": "S=1", "code": "S1", "seconds_per_epoch": 2.0, "n_parameters": 5,
                 "device": "test GPU", "data": "device"}  # fmt: skip
    _fail_after_first_run(monkeypatch, image_cost, image_row)
    with pytest.raises(SystemExit):
        image_cost.main(["--models", "S1", "S5", "--out", str(tmp_path)])
    report = (tmp_path / "image_cost_vanilla.md").read_text()
    assert "| S=1 | 5 | 2.00 | 1.00x |" in report and "S=5" not in report
    assert "test GPU" in report


def test_singlecell_refuses_models_without_scvi_before_training(tmp_path, monkeypatch):
    """Without SCVI the paired report cannot be written: refused before any training."""
    from benchmarks.singlecell import protocol as singlecell

    monkeypatch.setattr(singlecell, "run_dataset", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        main(["--models", "S5:L2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(
            ["--models", "scvi:L2", "S5", "--out", str(tmp_path)]
        )  # a deeper SCVI is no reference


def test_cost_refuses_an_untimed_run(tmp_path):
    with pytest.raises(SystemExit):
        cost.main(["--epochs", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # every ratio is to SCVI
        cost.main(["--models", "S2", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "code",
    [
        "scvi",
        "S1",
        "S5",
        "S5:ensemble",
        "S50:shared:A1",
        "S20:some_to_some:shared:A2",
        "S5:shared:A1:H64",
        "scvi:L2",
        "S1:L2",
        "S5:D",
    ],
)
def test_model_codes_round_trip(code):
    spec = ModelSpec.parse(code)
    assert ModelSpec.parse(spec.code) == spec
    assert model_family(spec.name) in ("SCVI", "MISELBO") or "S=" not in model_family(spec.name)


def test_model_codes_are_checked():
    with pytest.raises(ValueError, match="unknown option"):
        ModelSpec.parse("S5:fast")
    with pytest.raises(ValueError, match="expected"):
        ModelSpec.parse("vae")
    assert ModelSpec.parse("S50:shared:A1").name == "MixSCVI(S=50, shared, A=1)"
    assert model_family("MixSCVI(S=50, shared, A=1)") == "shared, A=1"
    # H<n>: the shared encoder of scmixvae 0.1.0, a row name of its own
    earlier = ModelSpec.parse("S5:shared:A1:H64")
    assert earlier.name == "MixSCVI(S=5, shared, A=1, head=64)"
    assert earlier.name != ModelSpec.parse("S5:shared:A1").name
    with pytest.raises(ValueError, match="add 'shared'"):
        ModelSpec.parse("S5:H64")
    # L<n>: scvi-tools' n_layers; only plain SCVI is the reference every row is paired with
    deeper = ModelSpec.parse("scvi:L2")
    assert (deeper.name, deeper.n_layers, deeper.is_reference) == ("SCVI(n_layers=2)", 2, False)
    assert ModelSpec.parse("scvi").is_reference
    for bad in ("scvi:A1", "scvi:L2:L3", "S5:L0"):
        with pytest.raises(ValueError):
            ModelSpec.parse(bad)
    assert not deeper.has_image_form and not earlier.has_image_form
    assert ModelSpec.parse("S50:shared:A1").has_image_form
    config = ModelSpec.parse("S50:ensemble:shared:A2").image_config(epochs=3, seed=4)
    assert (config.n_components, config.objective, config.shared_encoder) == (50, "ensemble", True)
    assert (config.n_sampled_components, config.epochs, config.seed) == (2, 3, 4)
    with pytest.raises(ValueError, match="single-cell only"):
        earlier.image_config()
    # D: trained with the counts on the device; a row of its own, no image form
    resident = ModelSpec.parse("S5:D")
    assert resident.name == "MixSCVI(S=5, device data)" and not resident.has_image_form
    assert (
        resident.train_kwargs == {"device_data": True} and not ModelSpec.parse("S5").train_kwargs
    )


def test_deeper_scvi_is_built_deeper_and_not_the_reference():
    import anndata as ad
    import numpy as np

    counts = np.random.default_rng(0).poisson(3.0, size=(40, 25)).astype(np.float32)
    deeper = ModelSpec.parse("scvi:L2").build(ad.AnnData(counts))
    plain = ModelSpec.parse("scvi").build(ad.AnnData(counts))
    assert deeper.module.n_layers == 2 and plain.module.n_layers == 1
    assert len(deeper.module.z_encoder.encoder.fc_layers) == 2
    rows = [
        {"model": "SCVI(n_layers=2)", "kind": "scvi", "seed": 0, "heldout_marginal_ll": -5.0},
        {"model": "SCVI", "kind": "scvi", "seed": 0, "heldout_marginal_ll": -7.0},
    ]
    paired = with_paired_differences(rows)
    assert [r["heldout_ll_minus_scvi"] for r in paired] == [2.0, 0.0]


def test_paired_tests_pair_each_model_with_its_references():
    lls = {
        ("SCVI", "scvi"): [-10.0, -11.0, -12.0],
        ("SCVI(n_layers=2)", "scvi:L2"): [-9.0, -10.0, -11.5],
        ("MixSCVI(S=5, n_layers=2)", "S5:L2"): [-8.0, -10.0, -11.0],
        ("MixSCVI(S=1)", "S1"): [-10.5, -11.0, -11.5],
        ("MixSCVI(S=5)", "S5"): [-9.0, -10.5, -11.0],
        ("MixSCVI(S=5, ensemble)", "S5:ensemble"): [-9.5, -10.5, -11.0],
    }
    rows = [{"model": m, "code": c, "seed": s, "heldout_marginal_ll": v}
            for (m, c), values in lls.items() for s, v in enumerate(values)]  # fmt: skip
    rows += [
        {"model": "MixSCVI(S=50, shared, A=1)", "code": "S50:shared:A1", "seed": 0,
         "heldout_marginal_ll": 0.0},  # one seed: no test
        {"model": "MixSCVI(S=5)", "code": "S5", "seed": 3},  # not scored: ignored
    ]  # fmt: skip
    # a row from before the code field: paired with SCVI only
    rows += [{"model": "MixSCVI(S=2)", "seed": s, "heldout_marginal_ll": v}
             for s, v in enumerate([-9.0, -11.0, -11.0])]  # fmt: skip
    tests = paired_tests(rows)
    assert list(tests.index) == [*(m for m, _ in lls if m != "SCVI"), "MixSCVI(S=2)"]
    old = tests.loc["MixSCVI(S=2)"]
    assert old["minus_scvi"] == pytest.approx(2.0 / 3) and math.isnan(old["minus_own_s1"])
    mix = tests.loc["MixSCVI(S=5)"]
    assert mix["minus_scvi"] == pytest.approx(2.5 / 3) and mix["above_scvi"] == "3/3"
    # against its own S=1, differences 1.5, 0.5, 0.5: t = 2.5 on 2 degrees of freedom, whose
    # two-sided p is 1 - t / sqrt(t^2 + 2)
    assert mix["minus_own_s1"] == pytest.approx(2.5 / 3)
    assert mix["p_own_s1"] == pytest.approx(1 - 2.5 / math.sqrt(2.5**2 + 2))
    assert math.isnan(mix["minus_same_depth_scvi"])  # its depth's SCVI is the first column's
    deep = tests.loc["MixSCVI(S=5, n_layers=2)"]
    assert deep["same_depth_scvi_reference"] == "SCVI(n_layers=2)"
    assert deep["minus_same_depth_scvi"] == pytest.approx(0.5)
    assert deep["above_same_depth_scvi"] == "2/3" and math.isnan(deep["minus_own_s1"])
    assert math.isnan(tests.loc["MixSCVI(S=1)", "minus_own_s1"])
    # at S=1 the objectives coincide: the ensemble's S=1 is MISELBO's
    assert tests.loc["MixSCVI(S=5, ensemble)", "own_s1_reference"] == "MixSCVI(S=1)"
    lines = _paired_test_lines(tests)
    assert len(lines) == 2 + len(tests)
    assert "+0.50 ± 0.41 vs SCVI(n_layers=2) | 2/3 |" in lines[3]


def test_holm_adjusts_a_family_of_p_values():
    # sorted 0.01, 0.03, 0.04 scaled by 3, 2, 1 -> 0.03, 0.06, 0.04, then made monotone
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_paired_metric_tests_pair_by_seed_and_correct_for_the_family():
    base = {m: 0.5 for m in METRICS}
    rows = []
    for seed, noise in enumerate([0.0, 0.01, -0.01, 0.02]):
        rows.append({"model": "SCVI", "seed": seed, "heldout_marginal_ll": 0.0,
                     **{f"{m}_mean": v + noise for m, v in base.items()}})  # fmt: skip
        # better on leiden ARI by 0.1 at every seed, and on nothing else
        mix = {f"{m}_mean": v + noise + (0.1 + noise / 2 if m == "leiden_ari" else 0.0)
               for m, v in base.items()}  # fmt: skip
        rows.append({"model": "MixSCVI(S=5)", "seed": seed, "heldout_marginal_ll": 0.0, **mix})
    rows += [
        {
            "model": "MixSCVI(S=50)",
            "seed": s,
            "heldout_marginal_ll": 0.0,
            **{f"{m}_mean": 0.9 for m in METRICS},
        }
        for s in (0, 1)
    ]  # 2 seeds: no test
    tests = paired_metric_tests(rows)
    assert set(tests["model"]) == {"MixSCVI(S=5)"} and len(tests) == len(METRICS)
    leiden = tests.set_index("metric").loc["leiden_ari"]
    diffs = np.array([0.1, 0.105, 0.095, 0.11])
    from scipy.stats import ttest_1samp

    assert leiden["minus_scvi"] == pytest.approx(diffs.mean())
    assert leiden["above_scvi"] == "4/4"
    assert leiden["p"] == pytest.approx(ttest_1samp(diffs, 0).pvalue)
    assert leiden["p_holm"] == pytest.approx(min(1, 6 * leiden["p"]))  # the smallest of six
    others = tests[tests["metric"] != "leiden_ari"]
    assert (others["minus_scvi"].abs() < 1e-12).all() and (others["p_holm"] == 1).all()
    lines = _paired_metric_lines(tests)
    assert lines[2].startswith("| MixSCVI(S=5) | 4 | +0.000 (0/4")
    assert "6 tests: 1 with p < 0.05 before the correction, 1 after it (1 of them" in lines[-1]


def test_image_cost_harness(tmp_path, data_dir):
    from benchmarks.images import cost as image_cost

    argv = ["--models", "S1", "S3:shared:A1", "--subset", "200", "--epochs", "2"]
    rows = image_cost.main([*argv, "--out", str(tmp_path), "--data", "device", "loader"])
    assert [r["model"] for r in rows] == ["S=1", "S=1 (host DataLoader)", "S=3, shared, A=1",
                                          "S=3, shared, A=1 (host DataLoader)"]  # fmt: skip
    assert [r["data"] for r in rows] == ["device", "loader"] * 2
    assert rows[0]["time_vs_s1"] == 1.0 and rows[1]["seconds_per_epoch"] > 0
    report = (tmp_path / "image_cost_vanilla.md").read_text()
    assert "| S=3, shared, A=1 |" in report
    assert "Command: `python -m benchmarks.images.cost --models S1 S3:shared:A1" in report
    # repeats: the fastest one is reported, every one listed
    specs = [image_cost.ModelSpec.parse(c) for c in ("S1", "S2")]
    runs = [{"code": c, "model": c, "seconds_per_epoch": t, "n_parameters": 1}
            for c, t in (("S1", 2.0), ("S2", 5.0), ("S1", 1.0), ("S2", 4.0))]  # fmt: skip
    summary = image_cost.summarise(runs, [*specs, image_cost.ModelSpec.parse("S3")])
    assert [r["seconds_per_epoch"] for r in summary] == [1.0, 4.0]  # S3 has not run: no row
    assert summary[1]["time_vs_s1"] == 4.0 and summary[1]["repeat_seconds_per_epoch"] == [5, 4]


def test_integration_harness(tmp_path, data_dir):
    pytest.importorskip("scib_metrics")
    from benchmarks.integration import protocol as integration

    args = ["--task", "sorted_pbmc", "--models", "scvi", "S3:shared:A1", "--seeds", "0",
            "--max-epochs", "2", "--max-cells", "1000", "--n-genes", "300",
            "--out", str(tmp_path)]  # fmt: skip
    (payload,) = integration.main(args)
    methods = {key.split(" seed ")[0] for key in payload["per_embedding"]}
    assert methods == {"PCA", "Harmony", "SCVI", "MixSCVI(S=3, shared, A=1)"}
    for scores in payload["per_embedding"].values():
        assert 0 <= scores["Batch correction"] <= 1 and 0 <= scores["Bio conservation"] <= 1
    assert (tmp_path / "integration_sorted_pbmc.png").stat().st_size > 0
    report = (tmp_path / "integration_sorted_pbmc.md").read_text()
    assert f"Command: `python -m benchmarks.integration {' '.join(args)}`" in report
    # resumed: the trained embeddings are reused, not retrained
    parsed = integration.build_parser().parse_args([*args, "--resume"])
    adata = integration.prepare("sorted_pbmc", parsed)

    def no_training(*_):
        raise AssertionError("a finished embedding was trained again")

    keys, runs, reused, skipped = integration.embed(
        "sorted_pbmc", adata, parsed, train=no_training
    )
    assert runs == payload["runs"] and len(keys) == 4 and reused == {} and skipped == []


def test_integration_harness_on_kang_reports_batch_mixing_only(tmp_path, data_dir):
    pytest.importorskip("scib_metrics")
    from benchmarks.integration import protocol as integration

    args = ["--task", "kang_ifnb", "--models", "scvi", "--seeds", "0", "--max-epochs", "2",
            "--max-cells", "800", "--n-genes", "300", "--out", str(tmp_path)]  # fmt: skip
    (payload,) = integration.main(args)
    assert payload["batch_key"] == "condition" and payload["label_key"] is None
    assert payload["n_cells"] == 800
    methods = {key.split(" seed ")[0] for key in payload["per_embedding"]}
    assert methods == {"PCA", "Harmony", "SCVI"}
    # no labels: no bio-conservation score is claimed, only batch mixing
    types = set(payload["metric_type"].values())
    assert "Bio conservation" not in types and "Batch correction" in types
    for scores in payload["per_embedding"].values():
        assert 0 <= scores["Batch correction"] <= 1
    report = (tmp_path / "integration_kang_ifnb.md").read_text()
    assert "Stimulation is biology, not a technical batch" in report
    assert "kept the scores" not in report


def test_integration_resume_keeps_reported_scores_without_the_embeddings(tmp_path, data_dir):
    """A fresh checkout has the committed report but not the embeddings: --resume keeps the
    report's scores for finished models and seeds, and trains and scores only the new ones."""
    pytest.importorskip("scib_metrics")
    import shutil

    from benchmarks.integration import protocol as integration

    args = ["--task", "kang_ifnb", "--models", "scvi", "--max-epochs", "2",
            "--max-cells", "800", "--n-genes", "300", "--out", str(tmp_path)]  # fmt: skip
    # --train-only (a GPU machine without scib-metrics) keeps the embedding, scores nothing
    (trained_only,) = integration.main([*args, "--seeds", "0", "--train-only"])
    assert [r["seed"] for r in trained_only["runs"]] == [0]
    assert (tmp_path / ".progress" / "integration_kang_ifnb" / "scvi_seed0.npy").exists()
    assert not (tmp_path / "integration_kang_ifnb.json").exists()
    real_train = integration.train_embedding

    def no_training(*_):
        raise AssertionError("an embedding kept by --train-only was trained again")

    integration.train_embedding = no_training
    try:
        (first,) = integration.main([*args, "--seeds", "0", "--resume"])
    finally:
        integration.train_embedding = real_train
    assert first["runs"] == trained_only["runs"]
    shutil.rmtree(tmp_path / ".progress")
    trained = []

    def record(spec, adata, batch_key, seed, parsed):
        trained.append((spec.name, seed))
        return integration.train_embedding(spec, adata, batch_key, seed, parsed)

    parsed = integration.build_parser().parse_args([*args, "--seeds", "0", "1", "--resume"])
    adata = integration.prepare("kang_ifnb", parsed)
    keys, runs, reused, skipped = integration.embed("kang_ifnb", adata, parsed, train=record)
    assert trained == [("SCVI", 1)] and keys == ["PCA", "Harmony", "SCVI seed 1"]
    assert reused == {"SCVI seed 0": first["per_embedding"]["SCVI seed 0"]}
    assert [r["seed"] for r in runs] == [0, 1] and runs[0] == first["runs"][0]
    assert skipped == []

    (second,) = integration.main([*args, "--seeds", "0", "1", "--resume"])
    assert list(second["per_embedding"]) == ["PCA", "Harmony", "SCVI seed 0", "SCVI seed 1"]
    assert second["per_embedding"]["SCVI seed 0"] == first["per_embedding"]["SCVI seed 0"]
    report = (tmp_path / "integration_kang_ifnb.md").read_text()
    assert "kept the scores of 1 trained embeddings" in report
    assert report.count("| SCVI | ") == 3  # the score table (mean over 2 seeds) and 2 runs
    # scores made with other settings are never mixed in
    shutil.rmtree(tmp_path / ".progress")
    other = integration.build_parser().parse_args(
        [*args, "--seeds", "0", "--resume", "--max-epochs", "3"]
    )
    assert integration.reported_scores("kang_ifnb", other) == ({}, {})


def test_score_trained_scores_what_is_on_disk_and_names_what_is_not(tmp_path, data_dir):
    """A long run in progress is scored as it stands: nothing is trained, the gaps are named."""
    pytest.importorskip("scib_metrics")
    from benchmarks.integration import protocol as integration

    args = ["--task", "kang_ifnb", "--models", "scvi", "--max-epochs", "2",
            "--max-cells", "800", "--n-genes", "300", "--out", str(tmp_path)]  # fmt: skip
    integration.main([*args, "--seeds", "0", "--train-only"])
    with pytest.raises(SystemExit):
        integration.main([*args, "--seeds", "0", "1", "--score-trained"])  # needs --resume
    real_train = integration.train_embedding

    def no_training(*_):
        raise AssertionError("--score-trained trained a model")

    integration.train_embedding = no_training
    try:
        (payload,) = integration.main([*args, "--seeds", "0", "1", "--resume", "--score-trained"])
    finally:
        integration.train_embedding = real_train
    assert list(payload["per_embedding"]) == ["PCA", "Harmony", "SCVI seed 0"]
    assert payload["not_trained"] == ["SCVI seed 1"]
    report = (tmp_path / "integration_kang_ifnb.md").read_text()
    assert "Not trained yet, so not in the tables: SCVI seed 1." in report


@pytest.mark.parametrize("task", ["mouse_bladder", "worm_neuron"])
def test_labelled_tasks_get_the_simulated_batch_and_their_cell_types(task, data_dir):
    import numpy as np

    from benchmarks.integration import protocol as integration
    from scmixvae.datasets import load_counts

    adata = integration.prepare(task, integration.build_parser().parse_args(["--task", task]))
    assert integration.TASKS[task] == ("batch", "cell_type")
    assert adata.obs["batch"].value_counts().to_dict() == {
        "original": adata.n_obs // 2,
        "thinned": adata.n_obs - adata.n_obs // 2,
    }
    labels = load_counts(task).obs["cell_type"]
    assert adata.n_vars == 2000 and adata.n_obs == len(labels)
    assert sorted(adata.obs["cell_type"].unique()) == sorted(labels.unique())
    depth = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    thinned = (adata.obs["batch"] == "thinned").to_numpy()
    # 50 % depth times capture efficiencies below 1: the thinned half has under half the counts
    assert depth[thinned].mean() < 0.5 * depth[~thinned].mean()
    assert np.allclose(adata.layers["counts"].data, np.round(adata.layers["counts"].data))
    if task in integration.PER_BATCH_GENE_FILTER:
        assert integration.detected_in_every_batch(adata, "batch", min_cells=3).all()
    # the report's note names the thinning that was run, not the default's
    other = integration.build_parser().parse_args(["--depth", "0.3", "--efficiency-sigma", "1"])
    assert "thinned to 30 % depth" in integration.task_note(task, other)
    assert "exp(N(0, 1^2))" in integration.task_note(task, other)


def test_the_simulated_batch_thins_counts_as_documented():
    import numpy as np
    import scipy.sparse as sp

    from benchmarks.integration.protocol import simulate_technical_batch

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(20.0, size=(400, 300)).astype(np.float32))
    thinned, efficiency = simulate_technical_batch(counts, 0.5, 0.5, np.random.default_rng(1))
    assert np.all(thinned.data == np.round(thinned.data)) and thinned.data.min() >= 1
    assert (thinned.toarray() <= counts.toarray()).all()
    assert efficiency.max() <= 1 and 0.4 < np.mean(efficiency == 1) < 0.6  # capped half
    expected = 0.5 * counts.sum(0).A1 * efficiency
    assert np.allclose(thinned.sum(0).A1, expected, rtol=0.15)  # E = depth * e_g * n
    assert abs(thinned.sum() / counts.sum() - 0.5 * efficiency.mean()) < 0.01


def test_image_nll_harness_and_resume(tmp_path, data_dir):
    import shutil

    import numpy as np

    from benchmarks.images import nll_vs_s as image_nll_vs_s

    args = ["--models", "S1", "S3:shared:A1", "--epochs", "1", "--warmup-epochs", "1",
            "--subset", "200", "--test-subset", "20", "--total-samples", "6", "--seeds", "0", "1",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path), "--resume"]  # fmt: skip
    first = image_nll_vs_s.main(args)
    rows = {(r["model"], r["seed"]): r for r in first["rows"]}
    assert len(rows) == 4
    assert rows[("S=3, shared, A=1", 1)]["samples_per_component"] == 2  # 6 samples split over S
    assert rows[("S=1", 0)]["samples_per_component"] == 6
    assert rows[("S=1", 0)]["test_nll_mixture"] != rows[("S=1", 1)]["test_nll_mixture"]
    assert all(r["test_nll_mixture"] <= r["negative_bound"] for r in first["rows"])
    paired = {p["code"]: p for p in first["paired_with_first_model"]}
    expected = np.mean([rows[("S=3, shared, A=1", s)]["test_nll_mixture"]
                        - rows[("S=1", s)]["test_nll_mixture"] for s in (0, 1)])  # fmt: skip
    assert paired["S3:shared:A1"]["n_seeds"] == 2
    assert paired["S3:shared:A1"]["minus_first"] == pytest.approx(expected)
    assert paired["S1"]["minus_first"] is None
    evaluation = tmp_path / "runs" / "vanilla_mnist_S3_shared_A1" / "evaluation.json"
    written = evaluation.stat().st_mtime_ns
    again = image_nll_vs_s.main(args)  # nothing trained or evaluated again
    assert again["rows"] == first["rows"]
    assert evaluation.stat().st_mtime_ns == written

    # a run that is not on disk keeps its row from the report, unless the budget changed
    shutil.rmtree(tmp_path / "runs" / "vanilla_mnist_S1_seed1")
    kept = image_nll_vs_s.main(args)
    assert kept["rows"] == first["rows"]
    assert not (tmp_path / "runs" / "vanilla_mnist_S1_seed1").exists()
    report = json.loads((tmp_path / "image_vanilla_mnist.json").read_text())
    assert [r["seed"] for r in report["rows"]] == [0, 0, 1, 1]
    only = image_nll_vs_s.main([*args[:3], "S2", *args[3:-1], "--report-only"])
    assert only["rows"] == first["rows"]  # S2 is listed as not run, and nothing trains
    assert only["not_run"] == ["S2 seed 0", "S2 seed 1"]
    assert not (tmp_path / "runs" / "vanilla_mnist_S2").exists()
    with pytest.raises(SystemExit):  # nothing at all to report is an error, not an empty table
        image_nll_vs_s.main(["--models", "S2", *args[3:-1], "--report-only"])
    shutil.rmtree(tmp_path / "runs" / "vanilla_mnist_S1_seed1", ignore_errors=True)
    other = ["--models", "S1", "--seeds", "1", *args[3:11], "--total-samples", "4",
             "--runs", str(tmp_path / "runs"), "--out", str(tmp_path), "--resume"]  # fmt: skip
    retrained = image_nll_vs_s.main(other)
    assert (tmp_path / "runs" / "vanilla_mnist_S1_seed1" / "evaluation.json").exists()
    assert retrained["rows"][0]["samples_per_component"] == 4
    assert retrained["paired_with_first_model"] == []


def test_the_likelihood_curve_leaves_training_unchanged(data_dir):
    import argparse

    import numpy as np

    from benchmarks.singlecell.protocol import prepare, run_one

    adata, split = prepare("sorted_pbmc", 100, 0, max_cells=300)
    histories = []
    for curve_models in (None, ["scvi"]):
        args = argparse.Namespace(
            max_epochs=6, batch_size=64, kl_warmup_epochs=2, patience=20, n_mc_samples=0,
            ll_seeds=None, curve_models=curve_models, curve_every=2, curve_samples=5,
        )  # fmt: skip
        row, model = run_one(ModelSpec.parse("scvi"), adata, split, 0, args)
        histories.append(model.history["elbo_validation"].to_numpy(dtype=float).ravel())
    assert len(row["ll_curve"]) == 4  # epochs 1, 2, 4, 6
    np.testing.assert_array_equal(histories[0], histories[1])


def test_init_control_twin_follows_scvi_and_pairs_with_the_benchmark(
    tmp_path, data_dir, monkeypatch
):
    import json

    import numpy as np

    from benchmarks.singlecell import init_control

    reference = tmp_path / "bench.json"
    rows = [
        {"model": "SCVI", "seed": 0, "epochs": 7, "heldout_marginal_ll": -100.0},
        {"model": "MixSCVI(S=1)", "seed": 0, "epochs": 5, "heldout_marginal_ll": -100.5},
        {"model": "MixSCVI(S=5)", "seed": 0, "epochs": 9, "heldout_marginal_ll": -90.0},
    ]
    reference.write_text(json.dumps({"rows": rows}))
    args = ["--dataset", "sorted_pbmc", "--seeds", "0", "--max-cells", "300", "--n-genes",
            "100", "--max-epochs", "4", "--patience", "50", "--n-mc-samples", "20",
            "--reference", str(reference), "--out", str(tmp_path)]  # fmt: skip
    table = init_control.main(args)
    (entry,) = table.to_dict("records")
    twin, other = init_control.TWIN, init_control.RESEEDED
    # the same weights, the same stream: the same training up to rounding (the held-out
    # estimates differ by their importance draws, about a nat at 20 samples after 4 epochs)
    assert entry[f"{twin}: epochs"] == entry[f"{other}: epochs"] == 4
    payload = json.loads((tmp_path / "init_control_sorted_pbmc.json").read_text())
    bounds = {r["arm"]: r["best_validation_bound"] for r in payload["rows"]}
    assert bounds[twin] == pytest.approx(bounds[other], rel=1e-5)
    assert abs(entry["twin - other stream"]) < 3
    assert entry["benchmark S1 - benchmark SCVI"] == pytest.approx(-0.5)
    other_ll = entry[f"{other}: log p(x)"]
    assert entry["other stream - benchmark SCVI"] == pytest.approx(other_ll + 100)
    # another stream moves SCVI: the arms are not copies of the benchmark rows
    assert np.isfinite(entry[f"{other}: log p(x)"]) and entry[f"{other}: log p(x)"] != -100.0
    report = (tmp_path / "init_control_sorted_pbmc.md").read_text()
    assert f"Command: `python -m benchmarks.singlecell.init_control {' '.join(args)}`" in report

    # resumed: the finished seed is not trained again
    def trained(*_):
        raise RuntimeError("a finished seed was trained again")

    monkeypatch.setattr(init_control, "run_seed", trained)
    again = init_control.main([*args, "--resume"])
    assert again.to_dict("records") == [entry]
    # nor in a fresh checkout, which has the committed report but no .progress
    for progress in (tmp_path / ".progress").glob("init_control_*"):
        progress.unlink()
    fresh = init_control.main([*args, "--resume"])
    assert fresh.to_dict("records") == [entry]
    # the report's rows count only under the same settings
    with pytest.raises(RuntimeError, match="trained again"):
        init_control.main([*args, "--resume", "--n-mc-samples", "21"])


def test_image_profile_harness(tmp_path, data_dir):
    from benchmarks.images import profile as image_profile

    args = ["--models", "S1", "S3:shared:A1", "--steps", "3", "--warmup", "1",
            "--subset", "200", "--out", str(tmp_path)]  # fmt: skip
    rows = image_profile.main(args)
    assert [r["model"] for r in rows] == ["S=1", "S=3, shared, A=1"]
    for row in rows:
        assert len(row["bare_step_ms_all"]) == 3 and row["bare_step_ms"] > 0
        assert row["lightning_step_ms"] > 0 and row["top_host_operators"]
        assert row["device_busy_ms_per_step"] is None  # no GPU in the tests: nothing claimed
    assert rows[1]["n_parameters"] > rows[0]["n_parameters"]  # the coded layer's code inputs
    report = (tmp_path / "image_profile_vanilla.md").read_text()
    assert "| S=3, shared, A=1 | " in report and "| – | – |" in report
    assert f"Command: `python -m benchmarks.images.profile {' '.join(args)}`" in report


def test_device_run_script_smoke_on_the_cpu(tmp_path, data_dir):
    """The GPU script's image stage, tiny, on the CPU: two seeds side by side, a paired report
    and the run files packed for a rebuild elsewhere (its cost stages are skipped)."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # this interpreter, named explicitly (a link to it on PATH loses a virtual env's packages)
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path),
           "SCMIXVAE_DATA_DIR": str(data_dir), "SMOKE": "1", "SKIP_COST": "1",
           "IMAGE_MODELS": "S1", "IMAGE_SEEDS": "0 1", "IMAGE_EPOCHS": "1",
           "IMAGE_STEM": "smoke", "MPLBACKEND": "Agg"}  # fmt: skip
    # no wall-clock limit of any kind: IMAGE_EPOCHS fixes the work, the budget is a day (it only
    # sizes the epochs when no IMAGE_EPOCHS is given), and the test has no timeout, so a busy
    # machine makes it slower, never red
    result = subprocess.run(["bash", "benchmarks/device_run.sh", "86400"], cwd=root, env=env,
                            capture_output=True, text=True)  # fmt: skip
    log = (tmp_path / "log.txt").read_text() if (tmp_path / "log.txt").exists() else ""
    assert result.returncode == 0, f"device_run.sh failed; its log ends:\n{log[-4000:]}"
    with tarfile.open(tmp_path / "results.tgz") as pack:
        names = pack.getnames()
        report = json.load(pack.extractfile("./smoke.json"))
    assert [(r["code"], r["seed"]) for r in report["rows"]] == [("S1", 0), ("S1", 1)]
    assert report["paired_with_first_model"][0]["n_seeds"] == 2
    for run in ("vanilla_mnist_S1", "vanilla_mnist_S1_seed1"):
        assert f"./runs/{run}/evaluation.json" in names
        assert f"./runs/{run}/trained_on.txt" in names
    assert not any(name.endswith(".ckpt") for name in names)  # checkpoints stay behind
    assert (
        "training every configuration and seed to 1 epochs" in (tmp_path / "log.txt").read_text()
    )
