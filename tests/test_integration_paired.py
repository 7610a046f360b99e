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


def test_no_table_without_a_reference():
    scores = _scores().drop(index=[k for k in _scores().index if k.startswith(("SCVI", "SysVI"))])
    assert paired_lines(scores) == []
