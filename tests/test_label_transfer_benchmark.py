"""The label-transfer benchmark end to end on a small real task: rows, scores, report, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

ARGS = ["--datasets", "sorted_pbmc", "--tasks", "B_small", "--seeds", "0", "1", "--models", "scvi",
        "S2", "--logistic", "--max-epochs", "3", "--scanvi-epochs", "2", "--query-epochs", "2",
        "--n-genes", "200", "--max-cells", "600", "--draws", "2"]  # fmt: skip


def test_label_transfer_benchmark_scores_every_method_alike_and_resumes(
    tmp_path, data_dir, monkeypatch
):
    from benchmarks.label_transfer import protocol as label_transfer

    label_transfer.main([*ARGS, "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "label_transfer_sorted_pbmc.json").read_text())
    rows = {row["method"]: row for row in payload["rows"]}
    assert set(rows) == {
        "SCVI + kNN", "SCANVI", "SCANVI, 2 draws", "MixSCVI(S=2) + kNN", "MixSCANVI(S=2)",
        "MixSCANVI(S=2), 2 draws", "logistic regression (CellTypist's model)",
    }  # fmt: skip
    for method, row in rows.items():
        # the unseen type is scored by the same two uncertainties for every method
        for key in ("unseen_auroc[1-confidence]", "unseen_auroc[entropy]", "ece", "accuracy"):
            assert np.isfinite(row[key]), (method, key)
        assert 0 <= row["unseen_flagged"] <= 1 and row["unseen"] == payload["rows"][0]["unseen"]
        assert row["peak_load"] > 0 and row["torch_threads"] >= 1  # to tell clean timings
    # only a mixture has components that can disagree
    assert "unseen_auroc[disagreement]" in rows["MixSCANVI(S=2)"]
    assert "unseen_auroc[disagreement]" not in rows["SCANVI"]
    report = (tmp_path / "label_transfer_sorted_pbmc.md").read_text()
    assert "Paired by seed against SCANVI" in report and "| MixSCANVI(S=2) | ece |" in report
    # the cross-dataset summary checks the goals per MixSCANVI configuration
    summary = (tmp_path / "label_transfer_summary.md").read_text()
    assert "| sorted_pbmc | B_small (2 seeds) | MixSCANVI(S=2) |" in summary
    assert "| sorted_pbmc | B_small | logistic regression (CellTypist's model) | 2 |" in summary

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(label_transfer, "run_reference_family", refuse)
    monkeypatch.setattr(label_transfer, "run_logistic", refuse)
    label_transfer.main([*ARGS, "--out", str(tmp_path), "--resume"])
    with pytest.raises(SystemExit, match="other settings"):
        label_transfer.main([*ARGS, "--out", str(tmp_path), "--resume", "--draws", "3"])
    with pytest.raises(SystemExit, match="use it with --resume"):
        label_transfer.main([*ARGS, "--out", str(tmp_path), "--redo"])

    # --redo runs again the selected rows (seed 1 of S2 and logistic) that an earlier version
    # of the benchmark stored (no load record), and only those
    stored = tmp_path / "label_transfer_sorted_pbmc.json"
    old = json.loads(stored.read_text())
    for row in old["rows"]:
        if row["seed"] == 1:
            del row["peak_load"]
    stored.write_text(json.dumps(old))
    ran = []

    def again(family):
        def run(*args):
            ran.append(family)
            return [dict(r) for r in payload["rows"] if (r["seed"], r["family"]) == (1, family)]

        return run

    monkeypatch.setattr(label_transfer, "run_reference_family", again("S2"))
    monkeypatch.setattr(label_transfer, "run_logistic", again("logistic"))
    redo = ["--datasets", "sorted_pbmc", "--tasks", "B_small", "--seeds", "1", "--models", "S2",
            "--logistic", *ARGS[ARGS.index("--max-epochs"):]]  # fmt: skip
    label_transfer.main([*redo, "--out", str(tmp_path), "--resume", "--redo"])
    assert ran == ["S2", "logistic"]
    after = json.loads(stored.read_text())["rows"]
    assert sorted(r["method"] for r in after) == sorted(r["method"] for r in payload["rows"])
    # the unselected family's old rows are kept as they were
    assert {(r["seed"], r["family"]) for r in after if "peak_load" not in r} == {(1, "scvi")}
    label_transfer.main([*redo, "--out", str(tmp_path), "--resume", "--redo"])
    assert ran == ["S2", "logistic"]  # the same command again: nothing left to redo


def test_a_time_is_clean_only_when_the_load_stayed_at_the_runs_own_threads():
    import pandas as pd

    from benchmarks._report import LoadMonitor
    from benchmarks.label_transfer.report import ran_alone

    with LoadMonitor(every=0.01) as load:
        sum(range(10**5))
    assert load.peak > 0
    frame = pd.DataFrame({"peak_load": [2.1, 3.4, np.nan], "torch_threads": [2, 2, 2]})
    assert ran_alone(frame).tolist() == [True, False, False]
    assert not ran_alone(pd.DataFrame({"seed": [0]})).any()  # rows from before the record
