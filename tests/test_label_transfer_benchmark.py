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
    from benchmarks import label_transfer

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
