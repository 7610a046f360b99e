"""The repository's promises to a newcomer: small modules, a short README whose code runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_over_500_lines():
    sizes = {p: len(p.read_text().splitlines()) for p in (ROOT / "scmixvae").rglob("*.py")}
    assert sizes, "no modules found"
    long = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 500}
    assert not long, f"split these by concern: {long}"


def test_readme_is_a_short_product_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme and "make demo" in readme
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)#]*|CHANGELOG\.md)\)", readme):
        assert (ROOT / link).exists(), f"README links to a missing file: {link}"


def test_version_has_one_source():
    import tomllib

    import scmixvae

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", scmixvae.__version__)
    assert f"## [{scmixvae.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_readme_quick_start_runs(data_dir, monkeypatch):
    """Every Python snippet of the README's single-cell quick start, as written and in order
    (the embedding, then label transfer), on fewer genes and epochs."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start: single cell", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python")[1:]]
    assert len(blocks) == 2, "the quick start has the embedding and the label-transfer snippets"
    code = "\n".join(blocks)
    for long, short in (("max_epochs=400", "max_epochs=2"), ("max_epochs=200", "max_epochs=2"),
                        ("n_top_genes=2000", "n_top_genes=300")):  # fmt: skip
        assert long in code
        code = code.replace(long, short)
    code = code.replace("sc.pl.umap(", "(lambda *a, **k: None)(")  # no figure in a test
    code = code.replace("scmixvae.tl.label_transfer(reference, query)",
                        "scmixvae.tl.label_transfer(reference, query, max_epochs=1)")  # fmt: skip
    monkeypatch.setenv("SCMIXVAE_DATA_DIR", str(data_dir))
    import matplotlib

    matplotlib.use("Agg")  # the label-transfer figure is drawn, not shown
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_mixscvi"].shape == (adata.n_obs, 10)
    assert "leiden" in adata.obs and "X_umap" in adata.obsm
    assert (adata.obs["uncertainty"] > 0).all()
    query = namespace["query"]
    labels = set(namespace["ref"].obs["cell_type"])
    assert set(query.obs["label_transfer_label"]) <= labels | {"Unknown"}
