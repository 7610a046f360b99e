"""Seconds per training epoch of the image mixture VAEs, against S=1 in the same run.

Every configuration (named as in :mod:`benchmarks._models`: ``S1``, ``S5``, ``S5:shared:A1``,
...) trains in its own process on the benchmark protocol (50,000 training images, batch 100)
for ``--epochs`` epochs; the time of the training part of each epoch after the first is
recorded (validation excluded), and their median is the run's time. With ``--repeats R`` the
configurations run interleaved (A B C, A B C, ...), so a drift of the machine's speed hits
them alike, and the fastest repeat is reported (other load on a shared machine only ever adds
time; every repeat is listed). Writes ``benchmarks/results/<stem>.{json,md}``.

Usage::

    python -m benchmarks.images.cost --arch vanilla --repeats 2 \\
        --models S1 S5 S5:A1 S5:shared:A1 S50:shared:A1 S200:shared:A1

Against the authors' code (a checkout of Lagergren-Lab/MixtureVAEs, timed in the same run; see
:mod:`benchmarks._authors_misvae`)::

    python -m benchmarks.images.cost --arch vanilla --epochs 3 --models S1 S5 \\
        --data device compiled authors --authors-code PATH --stem image_cost_authors
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .._models import ModelSpec
from .._report import command_line, machine_description, write_report
from .._timing import EpochTimer

RESULTS = Path(__file__).parents[1] / "results"
# --data: images on the device (the default), the host DataLoader of 0.2, or on the device with
# the training loss through torch.compile (its compilation falls in the untimed first epoch), or
# the authors' own MISVAE code (Lagergren-Lab/MixtureVAEs, imported from --authors-code)
PATH_LABELS = {"device": "", "loader": " (host DataLoader)", "compiled": " (torch.compile)",
               "authors": " (authors' MISVAE code)"}  # fmt: skip


def run_child(spec: ModelSpec, args: argparse.Namespace) -> dict:
    """Train one configuration and time its epochs (runs in a child process)."""
    import torch

    from scmixvae.image.training import train

    path = args.data[0]
    if path == "authors":
        from .authors_misvae import time_authors_epochs

        timed = time_authors_epochs(args.authors_code, spec.n_components, args.dataset,
                                    args.epochs, args.subset)  # fmt: skip
        seconds, n_parameters, fallback = timed["epoch_seconds"], timed["n_parameters"], None
    else:
        config = spec.image_config(
            architecture=args.arch, dataset=args.dataset, epochs=args.epochs,
            warmup_epochs=args.epochs, patience=args.epochs, subset=args.subset,
            device_data=path != "loader", compile=path == "compiled",
        )  # fmt: skip
        timer = EpochTimer()
        with tempfile.TemporaryDirectory() as run:
            summary = train(config, run, progress_bar=False, callbacks=[timer])
        seconds, n_parameters = timer.seconds, summary["n_parameters"]
        fallback = summary["compile_fallback"]
    return {
        "model": spec.label + PATH_LABELS[path],
        "code": spec.code,
        "data": path,
        "epoch_seconds": seconds,
        "seconds_per_epoch": statistics.median(seconds[1:]),
        "n_parameters": n_parameters,
        "compile_fallback": fallback,
        "torch_threads": torch.get_num_threads(),
        "device": machine_description(),
    }


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _versus_authors(row: dict) -> str:
    """The report's cell of the ratio to the authors' code (``–`` where S has no such run)."""
    return f"{row['time_vs_authors']:.2f}x | " if "time_vs_authors" in row else "– | "


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vanilla")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--models", nargs="+", default=["S1", "S5", "S5:shared:A1"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="images per split")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--stem", default=None, help="results name (default image_cost_<arch>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--data", nargs="+", choices=list(PATH_LABELS), default=["device"],
        help="training path(s): images on the device, sliced there (the default), the host "
        "DataLoader of scmixvae 0.2, or on the device with torch.compile; several are timed "
        "side by side",
    )  # fmt: skip
    parser.add_argument(
        "--authors-code", default=None, metavar="PATH",
        help="a checkout of Lagergren-Lab/MixtureVAEs, for --data authors",
    )  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command = command_line("benchmarks.images.cost", argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    specs = [ModelSpec.parse(m) for m in args.models]
    if not all(spec.has_image_form for spec in specs):
        parser.error("scvi, H<n> and L<n> are single-cell models or options with no image form")
    if args.child is not None:
        print(json.dumps(run_child(ModelSpec.parse(args.child), args)))
        return []
    if "authors" in args.data:
        if args.authors_code is None:
            parser.error("--data authors needs --authors-code PATH (a MixtureVAEs checkout)")
        from .authors_misvae import authors_code_dir

        authors_code_dir(args.authors_code)
        if args.arch != "vanilla" or args.dataset == "binarized_mnist":
            parser.error("--data authors times the vanilla MISVAE on mnist or fashion_mnist")
        if any(s.shared_encoder or s.n_sampled_components or s.objective != specs[0].objective
               for s in specs):  # fmt: skip
            parser.error("--data authors: the authors' MISVAE has stratified S only (S1, S5, ...)")
    if specs[0].code != "S1":
        parser.error("the first model must be S1: every ratio is to it")

    runs = []
    for _ in range(args.repeats):
        for spec, data in [(spec, data) for spec in specs for data in args.data]:
            cmd = [sys.executable, "-m", "benchmarks.images.cost", "--child", spec.code,
                   "--arch", args.arch, "--dataset", args.dataset,
                   "--epochs", str(args.epochs), "--data", data]  # fmt: skip
            if args.authors_code:
                cmd += ["--authors-code", str(args.authors_code)]
            if args.subset:
                cmd += ["--subset", str(args.subset)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
            # rewritten after every run, so that a run cut short keeps what it measured
            rows = summarise(runs, specs, args.data)
            lines = report_lines(rows, args)
            payload = {"settings": vars(args) | {"out": str(args.out)}, "rows": rows,
                       "runs": runs}  # fmt: skip
            write_report(args.out / (args.stem or f"image_cost_{args.arch}"), payload, lines)
    print("\n".join(lines))
    return rows


def summarise(runs: list[dict], specs: list[ModelSpec], data=None) -> list[dict]:
    """One row per configuration (and data path, when ``data`` lists them) that has run: its
    fastest repeat, and the ratio to the first row's, S=1 on the first data path."""
    rows = []
    for spec, path in [(spec, path) for spec in specs for path in (data or [None])]:
        mine = [r for r in runs if r["code"] == spec.code and path in (None, r.get("data"))]
        if not mine:
            continue
        rows.append(mine[0] | {
            "seconds_per_epoch": min(r["seconds_per_epoch"] for r in mine),
            "repeat_seconds_per_epoch": [r["seconds_per_epoch"] for r in mine],
        })  # fmt: skip
    authors = {r["code"]: r["seconds_per_epoch"] for r in rows if r.get("data") == "authors"}
    for row in rows:
        row["time_vs_s1"] = row["seconds_per_epoch"] / rows[0]["seconds_per_epoch"]
        if row["code"] in authors:
            row["time_vs_authors"] = row["seconds_per_epoch"] / authors[row["code"]]
    return rows


def report_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    vs_authors = any("time_vs_authors" in r for r in rows)
    return [
        f"# Image VAE ({args.arch}, {args.dataset}): seconds per training epoch",
        "",
        f"{args.subset or 50_000} training images per epoch, batch 100; the training part of "
        f"epochs 2..{args.epochs} (validation excluded), median over them; fastest of "
        f"{args.repeats} interleaved repeat(s) (all listed); one process per run, one run at a "
        f"time on {rows[0].get('device', 'CPU')}. Ratios are to S=1 from the same run.",
        "",
        f"Command: `{args.command}`",
        "",
        "| model | parameters | s / epoch | time vs S=1 | "
        + ("time vs the authors' code, same S | " if vs_authors else "")
        + "repeats (s) |",
        "|---|---|---|---|---|" + ("---|" if vs_authors else ""),
        *(
            f"| {r['model']} | {r['n_parameters']:,} | {r['seconds_per_epoch']:.2f} | "
            f"{r['time_vs_s1']:.2f}x | "
            + (_versus_authors(r) if vs_authors else "")
            + f"{_seconds(r['repeat_seconds_per_epoch'])} |"
            for r in rows
        ),
        *(
            [
                "",
                "The authors' code: Lagergren-Lab/MixtureVAEs (`mnist_train.trainer` and "
                "`models.misvae.MISVAE`, run unmodified from the checkout given to "
                "`--authors-code`, on the same images; see "
                "`benchmarks/images/authors_misvae.py`).",
            ]
            if vs_authors
            else []
        ),
        *(
            f"\n{r['model']}: torch.compile failed ({r['compile_fallback']}); timed uncompiled."
            for r in rows
            if r.get("compile_fallback")
        ),
    ]


if __name__ == "__main__":
    main()
