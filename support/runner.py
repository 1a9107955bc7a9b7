"""Run notebooks with papermill, collect their recorded metrics, and keep committed notebooks tidy.

Behind ``python -m support``:

* ``run [NOTEBOOK ...] [-p NAME VALUE ...] [--out DIR]`` executes notebooks (all, in order, by
  default) and prints one table of every recorded metric;
* ``regenerate [NOTEBOOK ...]`` re-executes the committed notebooks in place at their defaults
  and normalises them (metadata, cell ids, execution counts);
* ``badges`` writes each notebook's Colab badge and setup cell from ``pyproject.toml``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import notebook as nb_runtime

KERNEL = "python3"
FAILED_SUFFIX = ".FAILED.ipynb"


def notebooks_dir() -> Path:
    return nb_runtime.project_root() / "notebooks"


def all_notebooks() -> list[Path]:
    return sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def resolve(spec: str) -> Path:
    """A notebook from a path, a file name, a stem (``00_start_here``) or its number (``00``)."""
    path = Path(spec)
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    matches = [p for p in all_notebooks() if p.stem == spec or p.name == spec
               or p.stem.split("_")[0] == spec]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(p.stem for p in all_notebooks())
    raise ValueError(f"notebook {spec!r} not found; the notebooks are: {known}.")


def parse_value(text: str) -> Any:
    """Parse a ``-p`` value as papermill does: ``True``/``False``/``None``, then int, then float,
    then (our addition, for lists such as ``[2, 8]``) YAML; anything else stays a string."""
    words = {"True": True, "False": False, "None": None}
    if text in words:
        return words[text]
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.strip().startswith("["):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            pass
    return text


def parameters_for(path: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``given`` that the notebook declares, checked against its schema."""
    declared = {p.name for p in nb_runtime.schema(path.stem)}
    chosen = {name: value for name, value in given.items() if name in declared}
    nb_runtime.validate(path.stem, chosen)
    return chosen


@dataclass
class Outcome:
    notebook: str
    ok: bool
    seconds: float
    output: Path
    metrics: dict[str, Any]
    error: str = ""


def execute(path: Path, output: Path, parameters: dict[str, Any], progress: bool = True) -> None:
    """Execute one notebook with papermill, from its own folder, into ``output``."""
    import papermill

    papermill.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(path.parent),
        progress_bar=progress,
        log_output=False,
    )


def run(
    specs: list[str] | None = None,
    given: dict[str, Any] | None = None,
    out: str | os.PathLike = "runs",
    progress: bool = True,
    stream=sys.stdout,
) -> list[Outcome]:
    """Execute notebooks; each writes ``<out>/<name>.ipynb`` and ``<out>/results/<name>.json``.

    Output is written under a temporary name and renamed when the notebook finishes: a
    notebook that fails is left as ``<name>.FAILED.ipynb``, never mistaken for a result.
    """
    given = dict(given or {})
    paths = [resolve(s) for s in specs] if specs else all_notebooks()
    if not paths:
        raise ValueError(f"no notebooks found in {notebooks_dir()}")
    unknown = set(given)
    plans = []
    for path in paths:
        declared = {p.name for p in nb_runtime.schema(path.stem)}
        unknown -= declared
        try:
            plans.append((path, parameters_for(path, given)))
        except ValueError as exc:
            raise ValueError(f"{path.stem}: {exc}") from None
    if unknown:
        raise ValueError(
            f"unknown parameter {sorted(unknown)[0]!r}: no notebook run here declares it."
        )
    out = Path(out).resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for i, (path, parameters) in enumerate(plans, 1):
        name = path.stem
        parameters = {**parameters, "results_dir": str(results)}
        final = out / f"{name}.ipynb"
        partial = out / f".{name}.running.ipynb"
        failed = out / f"{name}{FAILED_SUFFIX}"
        result_file = results / f"{name}.json"
        for stale in (final, failed, result_file):
            stale.unlink(missing_ok=True)
        print(f"[{i}/{len(plans)}] {name}", file=stream, flush=True)
        began = time.perf_counter()
        try:
            execute(path, partial, parameters, progress=progress)
        except Exception as exc:  # papermill's errors carry the cell's exception
            seconds = time.perf_counter() - began
            if partial.exists():
                os.replace(partial, failed)
            outcomes.append(Outcome(name, False, seconds, failed, {}, _describe(exc)))
            print(f"    FAILED after {seconds:.0f} s: {outcomes[-1].error}", file=stream)
            continue
        seconds = time.perf_counter() - began
        os.replace(partial, final)
        metrics = json.loads(result_file.read_text())["metrics"] if result_file.exists() else {}
        outcomes.append(Outcome(name, True, seconds, final, metrics))
        print(f"    done in {seconds:.0f} s", file=stream, flush=True)
    return outcomes


def _describe(exc: Exception) -> str:
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}"


def results_table(outcomes: list[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        for metric, value in nb_runtime.flatten(outcome.metrics).items():
            rows.append((outcome.notebook, metric, value))
        rows.append((outcome.notebook, "wall_time_s", round(outcome.seconds, 1)))
    return nb_runtime.text_table(rows, ("notebook", "metric", "value"))


# --------------------------------------------------------------------------- committed notebooks


def normalise(notebook) -> None:
    """Tidy an executed notebook for committing: drop papermill's and Jupyter's per-run
    metadata, keep tags, give every cell a stable id, set the standard kernel metadata."""
    keep_cell_metadata = {"tags"}
    for index, cell in enumerate(notebook.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in keep_cell_metadata}
        if not cell.get("id") or cell.get("id", "").startswith("papermill"):
            cell["id"] = f"cell-{index:02d}"
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("papermill", None)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }


def regenerate(specs: list[str] | None = None, progress: bool = True, stream=sys.stdout):
    """Re-execute committed notebooks in place at their default parameters, then normalise.

    The executed copy replaces the committed one only when every cell ran."""
    import nbformat

    paths = [resolve(s) for s in specs] if specs else all_notebooks()
    for path in paths:
        print(f"regenerating {path.name}", file=stream, flush=True)
        tmp = path.with_name(f".{path.stem}.regenerating.ipynb")
        began = time.perf_counter()
        try:
            execute(path, tmp, {}, progress=progress)
            executed = nbformat.read(tmp, as_version=4)
            normalise(executed)
            nbformat.validate(executed)
            nbformat.write(executed, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        size = path.stat().st_size / 1e6
        print(f"    {time.perf_counter() - began:.0f} s, {size:.2f} MB", file=stream)


def write_badges(paths: list[Path] | None = None, repository: str | None = None) -> list[Path]:
    """Put the Colab badge (first line of the first Markdown cell) and the setup cell (first
    code cell) of each notebook in line with the repository URL of ``pyproject.toml``."""
    import nbformat

    repository = repository or nb_runtime.repository_url()
    changed = []
    for path in paths or all_notebooks():
        notebook = nbformat.read(path, as_version=4)
        relative = f"notebooks/{path.name}"
        badge = nb_runtime.badge_markdown(repository, relative)
        first_md = next(c for c in notebook.cells if c.cell_type == "markdown")
        lines = first_md.source.split("\n")
        badge_at = [i for i, line in enumerate(lines) if "colab-badge.svg" in line]
        if badge_at:
            lines[badge_at[0]] = badge
        else:
            lines[1:1] = ["", badge]
        first_code = next(c for c in notebook.cells if c.cell_type == "code")
        setup = nb_runtime.colab_setup_source(repository)
        before = (first_md.source, first_code.source)
        first_md.source = "\n".join(lines)
        if first_code.source.startswith(nb_runtime.SETUP_MARKER):
            first_code.source = setup
        else:
            raise ValueError(f"{path}: the first code cell is not the Colab setup cell")
        if before != (first_md.source, first_code.source):
            nbformat.write(notebook, path)
            changed.append(path)
    readme = nb_runtime.project_root() / "README.md"
    if readme.exists() and _write_readme_table(readme, repository):
        changed.append(readme)
    return changed


README_START = "<!-- notebooks: generated by `python -m support badges` -->"
README_END = "<!-- /notebooks -->"


def _write_readme_table(readme: Path, repository: str) -> bool:
    """Rewrite the README's table of notebooks (title and badge of each) between its markers."""
    import nbformat

    rows = ["| notebook | what it covers | open |", "|---|---|---|"]
    for path in all_notebooks():
        first = next(c for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "markdown")
        title = first.source.split("\n")[0].lstrip("# ").strip()
        number, _, topic = title.partition(" · ")
        badge = nb_runtime.badge_markdown(repository, f"notebooks/{path.name}")
        rows.append(f"| [{path.stem}](notebooks/{path.name}) | {topic or number} | {badge} |")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} lacks the markers {README_START} ... {README_END}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    updated = head + README_START + "\n" + "\n".join(rows) + "\n" + README_END + tail
    if updated == text:
        return False
    readme.write_text(updated)
    return True


def failure_report(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok]
    lines = [f"{len(failed)} notebook(s) failed:"]
    lines += [f"  {o.notebook}: {o.error}\n    (partial output: {o.output})" for o in failed]
    return "\n".join(lines)

