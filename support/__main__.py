"""Command line: ``python -m support {run,sweep,regenerate,normalise,badges,panel} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

from . import runner


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m support",
        description="Run the Generative Objectives notebooks and collect their results.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands)
    _sweep_parser(commands)
    _maintenance_parsers(commands)
    return parser


def _run_parser(commands) -> None:
    run = commands.add_parser(
        "run",
        help="execute notebooks with papermill and print one table of their recorded metrics",
        description="Execute notebooks (all by default, --jobs at once) with papermill from their "
        "own folder, each in its own kernel; print one table of every recorded metric, in the "
        "order asked for. With two or more jobs the longest start first, and a notebook that reads "
        "another's results waits for it. A parameter given with -p goes to every notebook that "
        "declares it.",
    )
    run.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                     help="path, name (00_start_here) or number (00); default: all")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="a parameter, value parsed as YAML")
    run.add_argument("--out", default="runs",
                     help="folder for executed notebooks and results (default: runs)")
    run.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="notebooks run at once, each in its own kernel (default: 2 with two or "
                     "more CPUs, else 1); papermill's progress bar shows only with 1")


def _sweep_parser(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="execute one notebook over a grid of parameter values and collect the results",
        description="Execute one notebook once per point of the Cartesian grid of the -p "
        "values, each run in its own folder under --out named from its parameters "
        "(beta=0.5,latent_dim=8). Every point is checked before the first run. Complete runs "
        "are skipped when the same command is run again; results.csv and results.png in "
        "--out collect every complete run.",
    )
    sweep.add_argument("notebook", metavar="NOTEBOOK",
                       help="path, name (03_vae_elbo) or number (03)")
    sweep.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
        help="a parameter and its comma-separated values, each parsed like a run -p value; "
        "commas inside [...] belong to a list: -p widths '[128, 64],[512, 256]'. A single "
        "value fixes the parameter for every run",
    )
    sweep.add_argument("--out", default=None,
                       help="folder of the sweep (default: sweeps/<notebook name>)")
    sweep.add_argument("--no-progress", action="store_true",
                       help="print no line per run and no papermill progress bar")


def _maintenance_parsers(commands) -> None:
    """regenerate, normalise, badges and panel: the commands that keep the committed notebooks."""
    regen = commands.add_parser(
        "regenerate",
        help="re-execute the committed notebooks in place at their defaults and normalise them, "
        "then redraw docs/series.png (as panel does)",
    )
    regen.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    regen.add_argument("--no-progress", action="store_true")

    tidy = commands.add_parser(
        "normalise",
        help="write the parameters cells from the schemas and normalise the notebooks' metadata "
        "(nothing is executed); --check only reports",
        description="Bring each committed notebook in line: its parameters cell generated from "
        "its schema in support/notebook.py, standard metadata, stable cell ids. With --check "
        "nothing is written, and the command fails, naming each problem (also code cells not "
        "executed in order, error outputs), when a notebook is out of step.",
    )
    tidy.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    tidy.add_argument("--check", action="store_true", help="report only; exit 1 on any problem")

    commands.add_parser(
        "badges", help="write each notebook's Colab badge and setup cell from pyproject.toml"
    )
    panel = commands.add_parser(
        "panel",
        help="compose docs/series.png, the README's picture, from the committed notebooks",
        description="Compose the figures of the cells tagged readme-panel in the committed "
        "notebooks (their first image output, in notebook then cell order) into one picture, "
        "two panels a row. Reads the notebooks only: nothing is executed.",
    )
    panel.add_argument("--out", default=None, help="the file to write (default: docs/series.png)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            given = {name: runner.parse_value(value) for name, value in args.parameter}
            outcomes = runner.run(args.notebooks, given, out=args.out,
                                  progress=not args.no_progress, jobs=args.jobs)
            print()
            print(runner.results_table(outcomes))
            if not all(o.ok for o in outcomes):
                print(file=sys.stderr)
                print(runner.failure_report(outcomes), file=sys.stderr)
                return 1
            print(f"\nExecuted notebooks and results are in {args.out}/")
        elif args.command == "sweep":
            return _sweep(args)
        elif args.command == "regenerate":
            runner.regenerate(args.notebooks, progress=not args.no_progress)
            print(f"README picture: {runner.write_panel()}")
        elif args.command == "normalise":
            problems = runner.normalise_files(args.notebooks, check_only=args.check)
            for path, found in problems.items():
                for problem in found:
                    print(f"{path.name}: {problem}", file=sys.stderr)
            if problems:
                return 1
            print("notebooks " + ("checked" if args.check else "normalised") + ": all in order")
        elif args.command == "badges":
            changed = runner.write_badges()
            print(f"badges and setup cells up to date ({len(changed)} file(s) changed)")
        elif args.command == "panel":
            out = runner.write_panel(out=args.out)
            print(f"{out} written ({out.stat().st_size / 1e3:.0f} KB)")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _sweep(args) -> int:
    grid = {}
    for name, text in args.parameter:
        if name in grid:
            raise ValueError(f"parameter {name!r} is given twice: give all its values in one "
                             f"-p, separated by commas")
        grid[name] = runner.parse_values(text)
    result = runner.sweep(args.notebook, grid, out=args.out, progress=not args.no_progress)
    print(result.summary())
    print(f"results of every complete run: {result.csv}" +
          (f" and {result.plot.name}" if result.plot else ""))
    if not result.ok:
        print(file=sys.stderr)
        print(runner.sweep_failure_report(result), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
