"""Every benchmark in one command: prints their tables and, with ``--write``, puts exactly that
text into the results section of ``benchmarks/README.md``.

Two blocks, in order. **speed**: step throughput (``throughput.py``), XLA against the default
(``xla.py``), time to quality (``time_to_quality.py``) and the series wall time (``series.py``).
**likelihood**: the MNIST likelihood reached in a fixed training time (``likelihood.py``). All in
one process (the notebooks run in their own kernels), each at its defaults. Progress goes to
stderr, the report to stdout.

* ``--quick``: tiny budgets (2 repetitions of 1 epoch or 20 steps; the time-to-quality plumbing check;
  notebook 00 only), about 3 minutes: checks that everything runs, measures nothing.
* ``--only BLOCK``: run one block (``speed`` or ``likelihood``).
* ``--write``: replace each block's text in ``benchmarks/README.md`` (between
  ``<!-- results:start -->`` and ``<!-- results:end -->`` for speed, ``<!-- likelihood:start -->``
  and ``<!-- likelihood:end -->`` for likelihood) with the report printed for it, headed by the
  date (UTC), the machine and the command. Refused with ``--quick``, and a block is not written
  when one of its benchmarks raised an error.
* ``--dcgan-minutes M``: the DCGAN's time-to-quality budget (default 10).

MNIST for time to quality is read from ``$SUPPORT_DATA_DIR`` (never downloaded)::

    SUPPORT_DATA_DIR=/path/to/data python benchmarks/run_all.py [--quick] [--write]
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import dataclasses
import datetime
import sys
import time
import traceback
from pathlib import Path

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines

import likelihood
import series
import throughput
import time_to_quality
import xla

README = Path(__file__).with_name("README.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"
MARKERS = {"speed": (START, END), "likelihood": ("<!-- likelihood:start -->", "<!-- likelihood:end -->")}
NOTE = "<!-- written by `python benchmarks/run_all.py --write`: rerun it, do not edit by hand -->\n\n"


def sections(quick: bool, dcgan_minutes: float | None):
    """``[(block, title, measure), ...]``: each ``measure()`` returns that section's Markdown."""
    quality = time_to_quality.QUICK if quick else time_to_quality.FULL
    if dcgan_minutes is not None:
        quality = dataclasses.replace(quality, dcgan_minutes=dcgan_minutes)
    repeats = {"repeats": 2, "steps": 20} if quick else {}
    per_model = {"repeats": 2, "epochs": 1} if quick else {}
    trainings = {"trainings": 1, "epochs": 2} if quick else {}
    return [
        ("speed", "Step throughput: `support` against a hand-written loop",
         lambda: throughput.measure(**per_model)),
        ("speed", "XLA: `jit_compile=True` against the default",
         lambda: xla.measure(**repeats) + "\n\n" + xla.measure_trainings(**trainings)),
        ("speed", "Time to quality", lambda: time_to_quality.measure(quality)),
        ("speed", "Series wall time", lambda: series.measure(["00"] if quick else None)),
        ("likelihood", "MNIST likelihood in a fixed training time",
         lambda: likelihood.measure(likelihood.QUICK if quick else likelihood.FULL,
                                    out=None if quick else likelihood.OUT)),
    ]


def write_results(report: str, readme: Path = README, block: str = "speed") -> None:
    """Replace the text between the marker lines of ``block`` in ``readme`` (each marker alone on
    its line, once, start before end) with ``report``."""
    start, end = MARKERS[block]
    lines = readme.read_text().split("\n")
    starts, ends = ([i for i, line in enumerate(lines) if line.strip() == m] for m in (start, end))
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ValueError(f"{readme} must hold the lines {start} and {end} once each, in this order.")
    lines[starts[0] + 1 : ends[0]] = report.split("\n")
    readme.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (about 3 minutes): checks the plumbing, measures nothing")
    parser.add_argument("--write", action="store_true",
                        help=f"put each block's report into {README.name} between its markers")
    parser.add_argument("--only", choices=sorted(MARKERS), default=None, help="run one block")
    parser.add_argument("--dcgan-minutes", type=float, default=None,
                        help="the DCGAN's time-to-quality budget in minutes of training (default 10)")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--write records results; --quick measures nothing worth recording.")
    if args.dcgan_minutes is not None and not args.dcgan_minutes > 0:
        parser.error(f"--dcgan-minutes={args.dcgan_minutes} must be positive.")

    command = " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    began = time.perf_counter()
    quick = " (quick run: a plumbing check, the figures mean nothing)" if args.quick else ""
    head = (f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC{quick}\n"
            f"- Machine: {throughput.machine()}\n- Command: `{command}`")
    print(head, flush=True)
    parts = {block: [head] for block in MARKERS if args.only in (None, block)}
    failed = set()
    for block, title, measure in sections(args.quick, args.dcgan_minutes):
        if block not in parts:
            continue
        print(f"== {title}", file=sys.stderr, flush=True)
        section_began = time.perf_counter()
        try:
            body = measure()
        except Exception:  # report it, and go on with the other benchmarks
            failed.add(block)
            body = "FAILED:\n\n```\n" + traceback.format_exc().rstrip() + "\n```"
        seconds = time.perf_counter() - section_began
        parts[block].append(f"### {title}\n\n{body}\n\n*This section: {seconds:,.0f} s.*")
        print(f"\n{parts[block][-1]}", flush=True)  # each section as soon as it is measured
    total = time.perf_counter() - began
    last = (f"*All benchmarks of this command: {total:,.0f} s ({total / 60:.1f} min), "
            "TensorFlow start-up excluded.*")
    print(f"\n{last}", flush=True)
    if args.write:
        for block, block_parts in parts.items():
            if block in failed:
                print(f"\n{README}: block {block} not written: a benchmark failed.", file=sys.stderr)
            else:
                write_results(NOTE + "\n\n".join([*block_parts, last]), block=block)
                print(f"\nBlock {block} written to {README}.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
