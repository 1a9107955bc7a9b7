"""Series wall time: every notebook executed end to end at its defaults, as ``python -m support run``.

The notebooks are executed with :func:`support.runner.run` (papermill, one fresh kernel per
notebook, from the notebooks' own folder) into a temporary output folder, so the committed
notebooks in ``notebooks/`` are never overwritten; the folder is deleted at the end unless
``--keep DIR`` names one. The table gives each notebook's wall time as the runner measures it
(kernel start-up included) against its budget, and the total, the wall time of the whole
command, against the main job's. The budgets are the project's rules on 2 CPU cores: each
notebook at its defaults in at most ``NOTEBOOK_BUDGET_S = 240`` s (4 minutes; the leaderboard
notebook ``LONG_BUDGETS``, 8 minutes), the whole series, which is the README's main job, in at
most ``GOAL_S = 600`` s (10 minutes). The runner's default runs two notebooks at once on such a
machine (:func:`support.runner.default_jobs`), so each notebook's own time includes sharing
the cores and the times add up to more than the total: a notebook within its budget there is
within it alone, one over it is judged by ``--jobs 1``, which measures them one after the
other. With ``--notebooks`` only the named notebooks run and the total is not judged (its
budget applies to the whole series).

    python benchmarks/series.py [--notebooks 00 03 ...] [--keep DIR] [--jobs N]
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import sys
import tempfile
import time
from pathlib import Path

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines

from throughput import header

from support import runner

GOAL_S = 600  # the main job: the whole series at its defaults
NOTEBOOK_BUDGET_S = 240  # each notebook at its defaults
LONG_BUDGETS = {"06_comparison": 480}  # the leaderboard notebook


def budget(notebook: str) -> int:
    """The wall-time budget of one notebook at its defaults on 2 CPU cores, in seconds."""
    return LONG_BUDGETS.get(notebook, NOTEBOOK_BUDGET_S)


def measure(notebooks: list[str] | None = None, keep: str | None = None, jobs: int | None = None) -> str:
    """Execute the notebooks (all by default; ``jobs`` at once, ``None``: the runner's default)
    and return the report (Markdown table)."""
    jobs = runner.default_jobs() if jobs is None else jobs
    with tempfile.TemporaryDirectory(prefix="series-") as scratch:
        out = Path(keep) if keep else Path(scratch)
        began = time.perf_counter()
        outcomes = runner.run(notebooks or None, {}, out=out, progress=False, stream=sys.stderr, jobs=jobs)
        total = time.perf_counter() - began
    everything = not notebooks or {o.notebook for o in outcomes} == {p.stem for p in runner.all_notebooks()}
    shared = f"wall time (s), {jobs} at once" if jobs > 1 else "wall time (s)"
    lines = [f"| notebook | outcome | {shared} | budget (s) | within |", "|---|---|---:|---:|---|"]
    for outcome in outcomes:
        status = "ok" if outcome.ok else f"FAILED: {outcome.error}"
        limit = budget(outcome.notebook)
        within = "yes" if outcome.seconds <= limit else ("NO" if jobs == 1 else "no (shared cores)")
        lines.append(f"| {outcome.notebook} | {status} | {outcome.seconds:.1f} | {limit} | {within} |")
    count = f"{len(outcomes)} notebook{'s' if len(outcomes) > 1 else ''}"
    lines.append(f"| **total**: the command's wall time ({count}, runner included) | | **{total:.1f}** "
                 f"| {GOAL_S} | {'yes' if total <= GOAL_S else 'NO'} |")
    if not everything:
        verdict = f"goal not judged: only {len(outcomes)} of {len(runner.all_notebooks())} notebooks ran"
    elif all(o.ok for o in outcomes):
        verdict = f"goal {'met' if total <= GOAL_S else 'NOT met'}"
    else:
        verdict = "goal not judged: a notebook failed"
    how = (f"`python -m support run` at its defaults runs {jobs} notebooks at once here, each in its own "
           "kernel, so a notebook's own time includes sharing the cores." if jobs > 1 else
           "The notebooks ran one after the other (`--jobs 1`).")
    return "\n".join([f"Goal: the whole series at its defaults in at most {GOAL_S} s "
                      f"({GOAL_S / 60:.0f} min) on 2 CPU cores, each notebook in at most "
                      f"{NOTEBOOK_BUDGET_S} s: {verdict} ({total:.0f} s). {how}", "", *lines])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", nargs="+", metavar="NOTEBOOK",
                        help="run only these (number, name or path; default: all)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the executed notebooks here instead of a temporary folder")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="notebooks at once (default: the runner's, 2 with two or more CPUs)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be a positive integer.")
    print(header() + "\n")
    print(measure(args.notebooks, args.keep, args.jobs))


if __name__ == "__main__":
    main()
