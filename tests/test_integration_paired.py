"""The integration report's paired-by-seed table (benchmarks.integration.paired)."""

from __future__ import annotations

import pandas as pd

from benchmarks.integration.paired import paired_lines


def _scores() -> pd.DataFrame:
    rows = {}
    for seed, (scvi, mix, sysvi) in enumerate([(0.60, 0.70, 0.61), (0.62, 0.69, 0.60),
                                               (0.61, 0.72, 0.63)]):  # fmt: skip
        for name, bio in (("SCVI", scvi), ("MixSCVI(S=5)", mix), ("SysVI(prior=vamp)", sysvi)):
            rows[f"{name} seed {seed}"] = {"Bio conservation": bio, "Total": bio / 2}
    rows["PCA"] = {"Bio conservation": 0.5, "Total": 0.25}
    return pd.DataFrame.from_dict(rows, orient="index")


def test_each_model_is_paired_by_seed_with_each_reference_once():
    lines = paired_lines(_scores(), metrics=("Bio conservation", "Total"))
    table = [line for line in lines if line.startswith("| ") and "reference |" not in line]
    pairs = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table]
    assert pairs == [("MixSCVI(S=5)", "SCVI"), ("SysVI(prior=vamp)", "SCVI"),
                     ("MixSCVI(S=5)", "SysVI(prior=vamp)")]  # fmt: skip
    assert "Holm over the table's 6 tests" in "\n".join(lines)
    # MixSCVI minus SCVI: +0.10, +0.07, +0.11 -> mean +0.093, higher on every seed
    assert table[0].split("|")[3].strip().startswith("+0.093 ± 0.017 (3/3, p ")


def test_a_batch_only_task_is_paired_on_the_metrics_it_has():
    # Kang's table has batch-correction scores only; the default metrics name three columns
    scores = _scores().rename(columns={"Bio conservation": "Batch correction"})
    scores = scores.drop(columns="Total")
    lines = paired_lines(scores)
    assert "| model | reference | Batch correction |" in lines
    assert "Holm over the table's 3 tests" in "\n".join(lines)


def test_no_table_without_a_reference():
    scores = _scores().drop(index=[k for k in _scores().index if k.startswith(("SCVI", "SysVI"))])
    assert paired_lines(scores) == []


def _write_report(path, bio, batch):
    """A minimal integration report: SCVI and one model, three seeds."""
    import json

    per_embedding = {}
    for seed in range(3):
        per_embedding[f"SCVI seed {seed}"] = {"Bio conservation": 0.6, "Batch correction": 0.9,
                                              "Total": 0.72}  # fmt: skip
        per_embedding[f"MixSCVI(S=5, prior=vamp) seed {seed}"] = {
            "Bio conservation": 0.6 + bio[seed],
            "Batch correction": 0.9 + batch[seed],
            "Total": 0.72,
        }
    per_embedding["PCA"] = {"Bio conservation": 0.5, "Batch correction": 0.4, "Total": 0.46}
    path.write_text(json.dumps({"per_embedding": per_embedding}))


def test_summary_pairs_each_task_with_scvi_and_counts_the_goal(tmp_path):
    from benchmarks.integration import summary

    _write_report(tmp_path / "integration_sorted_pbmc.json", [0.08, 0.07, 0.09], [0.01, -0.01, 0])
    _write_report(tmp_path / "integration_worm_neuron.json", [0.02, 0.01, 0.02], [-0.03] * 3)
    rows = summary.main(["--out", str(tmp_path)])
    assert [(r["task"], r["metric"]) for r in rows][:2] == [
        ("sorted_pbmc", "Bio conservation"),
        ("sorted_pbmc", "Batch correction"),
    ]
    bio = {r["task"]: r for r in rows if r["metric"] == "Bio conservation"}
    assert round(bio["sorted_pbmc"]["minus"], 3) == 0.08 and bio["worm_neuron"]["better"] == "3/3"
    report = (tmp_path / "integration_summary.md").read_text()
    assert "Holm over the table's 6 tests" in report  # 2 tasks x 3 metrics; PCA is not paired
    # +0.08 reaches the 0.03 margin on PBMC only; worm's batch correction is lower on every seed
    assert ("| MixSCVI(S=5, prior=vamp) | 1 of 2 (sorted_pbmc) | 1 of 2 (worm_neuron) |"
            in report)  # fmt: skip


def test_summary_refuses_a_folder_without_reports(tmp_path):
    import pytest

    from benchmarks.integration import summary

    with pytest.raises(SystemExit, match="no labelled integration report"):
        summary.main(["--out", str(tmp_path)])
