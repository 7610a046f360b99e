"""The single-cell benchmark harness runs end to end on a tiny configuration."""

from __future__ import annotations

import json
import math

from benchmarks.singlecell import main


def test_harness_end_to_end(tmp_path, data_dir):
    args = ["--datasets", "sorted_pbmc", "--components", "1", "2", "--seeds", "0",
            "--max-epochs", "1", "--max-cells", "300", "--n-genes", "200",
            "--n-mc-samples", "10", "--batch-size", "128", "--out", str(tmp_path)]  # fmt: skip
    (payload,) = main(args)
    saved = json.loads((tmp_path / "singlecell_sorted_pbmc.json").read_text())
    assert saved["split"] == payload["split"] and sum(saved["split"].values()) == 300
    models = set(saved["summary"])
    assert models == {"MixSCVI(S=1)", "MixSCVI(S=2)", "MixSCVI(S=2, ensemble)", "SCVI"}
    for row in saved["rows"]:
        for key in ("kmeans_ari_mean", "svm_accuracy_concat", "heldout_marginal_ll"):
            assert math.isfinite(row[key])
        assert -1 <= row["silhouette_mean"] <= 1
    assert saved["summary"]["SCVI"]["epoch_time_vs_scvi"] == 1.0
    markdown = (tmp_path / "singlecell_sorted_pbmc.md").read_text()
    assert "| MixSCVI(S=2, ensemble) |" in markdown and "kmeans_ari_mean" in markdown
    assert (tmp_path / "singlecell_sorted_pbmc_metrics.png").stat().st_size > 0
    assert (tmp_path / "singlecell_sorted_pbmc_umap.png").stat().st_size > 0
