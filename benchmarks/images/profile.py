"""Where an image training step's time goes: the bare step, its kernels, and Lightning's step.

For each configuration (named as in :mod:`benchmarks._models`), the model is built as
:func:`scmixvae.image.training.train` builds it, on the GPU when there is one, and fed batches of
100 dynamically binarised MNIST training images that are already on the device. Three times
per training step are measured:

1. **bare step**: forward pass, the training bound, backward pass and Adam step, synchronised
   with the device, median over ``--steps`` steps after ``--warmup`` untimed ones;
2. **device busy** (GPU only): the same steps under :mod:`torch.profiler`; the kernels' and
   copies' summed time on the device per step, so the share of the bare step in which the
   device computes; the rest is Python, operator dispatch and kernel launches;
3. **Lightning step**: one short :func:`~scmixvae.image.training.train` run on ``--subset``
   training images (two epochs; the second, without validation, is timed), divided by its steps:
   the bare step plus the data loader, the binarisation on the host, the copy to the device and
   Lightning's logging.

The profiler's top operators by self time on the host and on the device are listed too. Writes
``benchmarks/results/<stem>.{json,md}``.

Usage::

    python -m benchmarks.images.profile --models S1 S5 S5:shared:A1 S50:shared:A1 S200:shared:A1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from .._models import ModelSpec
from .._report import command_line, machine_description, write_report
from .._timing import EpochTimer

RESULTS = Path(__file__).parents[1] / "results"
TOP_OPERATORS = 6


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_model(spec: ModelSpec, args: argparse.Namespace) -> dict:
    """The three step times of one configuration and its profiler's top operators."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from scmixvae.image.data import load_splits
    from scmixvae.image.models import build_model
    from scmixvae.image.training import ImageVAEPlan, train
    from scmixvae.mixture import bound

    config = spec.image_config(
        architecture=args.arch, dataset=args.dataset, epochs=2, warmup_epochs=1, patience=2,
        subset=args.subset,
    )  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    splits = load_splits(args.dataset, seed=0, subset=args.subset)
    images = torch.from_numpy(splits.train).to(device)
    model = build_model(args.arch, spec.n_components, spec.shared_encoder).to(device)
    plan = ImageVAEPlan(model, config, steps_per_epoch=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    n_batches = images.shape[0] // config.batch_size

    def step(i: int) -> None:
        start = (i % n_batches) * config.batch_size
        x = torch.bernoulli(images[start : start + config.batch_size])
        loss = -bound(plan._terms(x, 1), plan.objective, 1.0).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    seconds = []
    for i in range(args.steps):
        _synchronize(device)
        start = time.perf_counter()
        step(i)
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_device else [])]
    with profile(activities=activities) as prof:
        for i in range(args.steps):
            step(i)
        _synchronize(device)
    events = prof.key_averages()

    def device_self(event) -> float:
        return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))

    # self times exclude children, so their sum counts every microsecond once; on the device
    # only the kernels and copies themselves are summed: not the host operators that launched
    # them, nor the device-side spans of host annotations such as ``Optimizer.step#Adam.step``
    # (which share a host event's name and cover kernels already counted)
    host_us = sum(e.self_cpu_time_total for e in events)
    host_names = {e.key for e in events if e.device_type == DeviceType.CPU}
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and e.key not in host_names]
    # on a CPU the host is the device, and the profiler's own overhead inflates its self times
    device_us = sum(device_self(e) for e in kernels) if on_device else None
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPERATORS]
    by_device = sorted(kernels, key=device_self, reverse=True)[:TOP_OPERATORS]
    bare = statistics.median(seconds)

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as run:
        summary = train(config, run, progress_bar=False, callbacks=[timer])
    lightning_steps = -(-len(splits.train) // config.batch_size)
    return {
        "model": spec.label,
        "code": spec.code,
        "device": machine_description(),
        "n_parameters": summary["n_parameters"],
        "bare_step_ms": 1e3 * bare,
        "bare_step_ms_all": [1e3 * s for s in seconds],
        "device_busy_ms_per_step": None if device_us is None else device_us / 1e3 / args.steps,
        "device_busy_share": None if device_us is None else device_us / 1e6 / args.steps / bare,
        "host_self_ms_per_step": host_us / 1e3 / args.steps,
        "lightning_step_ms": 1e3 * timer.seconds[-1] / lightning_steps,
        "top_host_operators": [
            (e.key[:80], e.self_cpu_time_total / 1e3 / args.steps) for e in by_host
        ],
        "top_device_operators": [
            (e.key[:80], device_self(e) / 1e3 / args.steps) for e in by_device
        ],
    }


def report_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    lines = [
        f"# Where an image training step's time goes ({args.arch}, {args.dataset})",
        "",
        f"On {rows[0]['device'] if rows else '?'}; batch 100, dynamic binarisation. Bare step: "
        f"forward, bound, backward and Adam, synchronised, median of {args.steps} steps after "
        f"{args.warmup} untimed ones. Device busy: the kernels' summed self time per step under "
        "torch.profiler (GPU only). Host self time: the operators' summed self time on the host "
        "under the profiler (its overhead included). Lightning step: a training epoch "
        f"of {args.subset} images through `train()` (the second epoch), over its steps.",
        "",
        f"Command: `{args.command}`",
        "",
        "| model | parameters | bare step (ms) | device busy (ms) | busy share | host self time "
        "(ms) | Lightning step (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        busy, share = r["device_busy_ms_per_step"], r["device_busy_share"]
        lines.append(
            f"| {r['model']} | {r['n_parameters']:,} | {r['bare_step_ms']:.2f} | "
            f"{'–' if busy is None else f'{busy:.2f}'} | "
            f"{'–' if share is None else f'{share:.0%}'} | "
            f"{r['host_self_ms_per_step']:.2f} | {r['lightning_step_ms']:.2f} |"
        )
    for r in rows:
        lines += ["", f"## {r['model']}: top operators per step (ms)", ""]
        for title, key in (("host", "top_host_operators"), ("device", "top_device_operators")):
            if r[key]:
                ops = ", ".join(f"`{name}` {ms:.2f}" for name, ms in r[key])
                lines.append(f"- {title}: {ops}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vanilla")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--models", nargs="+", default=["S1", "S5", "S5:shared:A1"])
    parser.add_argument("--steps", type=int, default=50, help="timed and profiled steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--subset", type=int, default=10_000, help="images per split")
    parser.add_argument("--stem", default=None, help="results name (default image_profile_<arch>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = command_line("benchmarks.images.profile", argv)
    specs = [ModelSpec.parse(m) for m in args.models]
    if not all(spec.has_image_form for spec in specs):
        parser.error("scvi, H<n> and L<n> are single-cell models or options with no image form")
    if args.subset < 100:
        parser.error("--subset must hold at least one batch of 100 images")
    rows = []
    for spec in specs:
        rows.append(profile_model(spec, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("top")}),
              flush=True)  # fmt: skip
        # rewritten after every model, so that a run cut short keeps what it measured
        payload = {"settings": vars(args) | {"out": str(args.out)}, "rows": rows}
        write_report(args.out / (args.stem or f"image_profile_{args.arch}"), payload,
                     report_lines(rows, args))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
