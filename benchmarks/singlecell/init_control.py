"""Is MixSCVI at S = 1 scVI in the converged benchmark? A control for its S = 1 rows.

In :mod:`benchmarks.singlecell` every model of seed ``s`` is built after
``scvi.settings.seed = s`` and trained on the random stream that follows, so SCVI and
MixSCVI(S=1) of one seed start from different initial weights (the stacked encoder draws its
own) and see different dropout masks and latent draws. Two arms per seed separate what the code
does from what the draw does, on the benchmark's data, split and training call
(:func:`benchmarks.singlecell.fit`):

``SCVI, other stream``
    SCVI built with seed ``s`` (the initial weights of the benchmark's SCVI row of seed ``s``),
    then trained on the random stream of seed ``stream_offset + s``: how far SCVI lands from
    itself when only the training draws change.
``MixSCVI(S=1) from SCVI's weights``
    MixSCVI(S=1) given the very same initial weights and trained on the same stream: equal to
    the first arm up to floating-point rounding if the two code paths are the same.

The report pairs both arms with the benchmark's SCVI and MixSCVI(S=1) rows of the same seed,
read from ``--reference`` (a :mod:`benchmarks.singlecell` JSON).

Usage::

    python -m benchmarks.singlecell.init_control --dataset mouse_bladder --seeds 0 1 2 3 4 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch

from .._models import ModelSpec
from .._report import command_line, machine_description, write_report
from .protocol import fit, heldout_ll, prepare

RESULTS = Path(__file__).parents[1] / "results"
RESEEDED, TWIN = "SCVI, other stream", "MixSCVI(S=1) from SCVI's weights"
# a finished seed is reused only under the same settings
PROGRESS_SETTINGS = [
    "split_seed",
    "n_genes",
    "max_cells",
    "max_epochs",
    "patience",
    "kl_warmup_epochs",
    "batch_size",
    "n_mc_samples",
    "stream_offset",
]


def twin_models(adata, seed: int) -> tuple:
    """SCVI built with ``seed``, and MixSCVI(S=1) holding a copy of its initial weights."""
    scvi.settings.seed = seed
    ref = ModelSpec.parse("scvi").build(adata.copy(), layer="counts")
    mix = ModelSpec.parse("S1").build(adata.copy(), layer="counts")
    state = {k: v for k, v in ref.module.state_dict().items() if not k.startswith("z_encoder")}
    loaded = mix.module.load_state_dict(state, strict=False)
    if loaded.unexpected_keys or any(not k.startswith("z_encoder") for k in loaded.missing_keys):
        raise RuntimeError(f"SCVI's weights do not map onto MixSCVI(S=1): {loaded}")
    mix.module.z_encoder.load_component_(0, ref.module.z_encoder)
    return ref, mix


def run_seed(adata, split, seed: int, args) -> list[dict]:
    """Both arms of one seed."""
    rows = []
    for arm, model in zip((RESEEDED, TWIN), twin_models(adata, seed), strict=True):
        scvi.settings.seed = args.stream_offset + seed
        seconds = fit(model, split, args)
        val = model.history["elbo_validation"]["elbo_validation"].to_numpy(dtype=float)
        scvi.settings.seed = seed  # the same importance draws for both arms
        rows.append({
            "arm": arm, "seed": seed, "stream_seed": args.stream_offset + seed,
            "epochs": len(model.history["train_loss"]), "best_epoch": int(np.argmin(val)) + 1,
            "best_validation_bound": float(val.min()), "wall_seconds": seconds,
            "heldout_marginal_ll": heldout_ll(model, model.adata, split[2], args.n_mc_samples),
        })  # fmt: skip
    return rows


def compare(rows: list[dict], reference: list[dict]) -> pd.DataFrame:
    """Per seed: both arms, the benchmark's SCVI and S = 1 rows, and their differences."""
    bench = {(r["model"], r["seed"]): r for r in reference if "heldout_marginal_ll" in r}
    table = []
    for seed in sorted({r["seed"] for r in rows}):
        arms = {r["arm"]: r for r in rows if r["seed"] == seed}
        if len(arms) < 2:
            continue
        entry = {"seed": seed}
        named = [(RESEEDED, arms[RESEEDED]), (TWIN, arms[TWIN]),
                 ("benchmark SCVI", bench.get(("SCVI", seed))),
                 ("benchmark MixSCVI(S=1)", bench.get(("MixSCVI(S=1)", seed)))]  # fmt: skip
        for name, row in named:
            entry[f"{name}: epochs"] = row["epochs"] if row else np.nan
            entry[f"{name}: log p(x)"] = row["heldout_marginal_ll"] if row else np.nan
        ll = {k[: -len(": log p(x)")]: v for k, v in entry.items() if k.endswith("log p(x)")}
        entry["twin - other stream"] = ll[TWIN] - ll[RESEEDED]
        entry["other stream - benchmark SCVI"] = ll[RESEEDED] - ll["benchmark SCVI"]
        entry["benchmark S1 - benchmark SCVI"] = (
            ll["benchmark MixSCVI(S=1)"] - ll["benchmark SCVI"]
        )
        table.append(entry)
    return pd.DataFrame(table)


def report_lines(table: pd.DataFrame, args) -> list[str]:
    diffs = [c for c in table.columns if " - " in c]
    lines = [
        f"# MixSCVI(S=1) against SCVI: initial weights and random stream ({args.dataset})",
        "",
        __doc__.split("Usage::")[0].split("\n", 1)[1].strip(),
        "",
        f"Training as the benchmark: at most {args.max_epochs} epochs, patience "
        f"{args.patience} on the validation bound, {args.kl_warmup_epochs}-epoch KL warm-up, "
        f"batch {args.batch_size}; held-out log p(x) from {args.n_mc_samples} importance "
        f"samples per test cell. Machine: {machine_description()}.",
        "",
        f"Command: `{args.command}`",
        "",
        "| seed | " + " | ".join(c for c in table.columns if c != "seed") + " |",
        "|" + "---|" * len(table.columns),
    ]
    for _, row in table.iterrows():
        cells = [f"{v:.0f}" if k.endswith("epochs") else f"{v:.3f}" for k, v in row.items()
                 if k != "seed"]  # fmt: skip
        lines.append(f"| {int(row['seed'])} | " + " | ".join(cells) + " |")
    if len(table):
        lines += ["", "| difference | mean ± std over seeds | seeds above 0 |", "|---|---|---|"]
        for column in diffs:
            values = table[column].dropna().to_numpy()
            if len(values):
                lines.append(f"| {column} | {values.mean():+.3f} ± {values.std():.3f} | "
                             f"{int((values > 0).sum())}/{len(values)} |")  # fmt: skip
    return lines


def reported_rows(stem: Path, args) -> list[dict]:
    """The rows of the existing report at ``stem``, if it was made with the same settings."""
    path = stem.with_suffix(".json")
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    saved = payload.get("settings", {})
    if any(saved.get(k) != getattr(args, k) for k in PROGRESS_SETTINGS):
        return []
    return payload.get("rows", [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mouse_bladder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--stream-offset", type=int, default=1000)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--n-genes", type=int, default=1200)
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=800)
    parser.add_argument("--patience", type=int, default=100)
    parser.add_argument("--kl-warmup-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--n-mc-samples", type=int, default=1000)
    parser.add_argument(
        "--reference", type=Path, default=None,
        help="benchmark JSON (default: converged_patience100's for the dataset)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "converged_patience100")
    parser.add_argument("--resume", action="store_true", help="reuse finished seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = build_parser().parse_args(argv)
    args.command = command_line("benchmarks.singlecell.init_control", argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reference_path = args.reference or (
        RESULTS / "converged_patience100" / f"singlecell_{args.dataset}.json"
    )
    reference = json.loads(reference_path.read_text())["rows"] if reference_path.exists() else []
    stem = args.out / f"init_control_{args.dataset}"
    key = "_".join(str(getattr(args, k)) for k in PROGRESS_SETTINGS)
    progress = stem.parent / ".progress" / f"{stem.name}_{key}.jsonl"
    progress.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in progress.read_text().splitlines()] if (
        args.resume and progress.exists()) else []  # fmt: skip
    if args.resume:
        # .progress is not committed: a fresh checkout resumes from the report's own rows
        in_progress = {(r["arm"], r["seed"]) for r in done}
        done += [r for r in reported_rows(stem, args) if (r["arm"], r["seed"]) not in in_progress]
    if not args.resume:
        progress.unlink(missing_ok=True)
    adata, split = prepare(args.dataset, args.n_genes, args.split_seed, args.max_cells)
    rows = [r for r in done if r["seed"] in args.seeds]
    for seed in args.seeds:
        if sum(r["seed"] == seed for r in rows) == 2:
            continue
        start = time.perf_counter()
        new = run_seed(adata, split, seed, args)
        with open(progress, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in new)
        rows = [r for r in rows if r["seed"] != seed] + new
        print(f"seed {seed}: {json.dumps(new)} ({time.perf_counter() - start:.0f} s)", flush=True)
    table = compare(rows, reference)
    payload = {"dataset": args.dataset, "settings": vars(args) | {"out": str(args.out),
               "reference": str(reference_path)}, "rows": rows,
               "per_seed": json.loads(table.to_json(orient="records"))}  # fmt: skip
    write_report(stem, payload, report_lines(table, args))
    return table


if __name__ == "__main__":
    main()
