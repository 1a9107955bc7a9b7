"""Run notebooks with papermill, collect their recorded metrics, and keep committed notebooks tidy.

Behind ``python -m support``:

* ``run [NOTEBOOK ...] [-p NAME VALUE ...] [--out DIR] [--jobs N]`` executes notebooks (all by
  default; two at once on a machine with two or more CPUs, longest first, each after those whose
  results it reads) and prints one table of every recorded metric;
* ``sweep NOTEBOOK -p NAME V1,V2,... [...] [--out DIR]`` executes one notebook over the Cartesian
  grid of the given values, one folder per run, resumable, and collects the recorded metrics
  into ``results.csv`` and ``results.png`` (see :func:`sweep`);
* ``regenerate [NOTEBOOK ...]`` re-executes the committed notebooks in place at their defaults
  and normalises them (metadata, cell ids, execution counts);
* ``normalise [NOTEBOOK ...] [--check]`` writes each notebook's parameters cell from its
  schema and normalises its metadata without executing it; ``--check`` changes nothing and
  fails, listing the problems, when a notebook is out of step (the test suite runs it);
* ``badges`` writes each notebook's Colab badge and setup cell from ``pyproject.toml``;
* ``panel`` composes the README's picture, ``docs/series.png``, from the figures of the cells
  tagged ``readme-panel`` in the committed notebooks (see :func:`write_panel`).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import checks
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


_SAY_LOCK = threading.Lock()


def _say(text: str, stream) -> None:
    """One whole line per call: ``print`` writes the text and its newline separately, so two
    notebooks reporting at once from their threads could run two lines together."""
    with _SAY_LOCK:
        stream.write(text + "\n")
        stream.flush()


@dataclass
class Outcome:
    notebook: str
    ok: bool
    seconds: float
    output: Path
    metrics: dict[str, Any]
    error: str = ""


THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def thread_environment(jobs: int) -> dict[str, str]:
    """The thread counts for each of ``jobs`` TensorFlow processes sharing this machine: the CPUs
    divided among them (at least 1 each), for the variables the user has not set.

    TensorFlow sizes its thread pools to every CPU of the machine. Two kernels on two cores then
    run four busy pools that wait on each other: measured on 2 cores (2026-12-07), two runs of
    notebook 06 at small parameters took 119-122 s side by side with TensorFlow's pools and
    56-69 s with one thread each, while one run alone took 53 s either way. One process alone
    (``jobs = 1``) keeps TensorFlow's default."""
    jobs = checks.positive_int(jobs, "jobs")
    if jobs == 1:
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {name: threads for name in THREAD_VARIABLES if name not in os.environ}


def _kernel_manager_class(env: dict[str, str] | None = None):
    """Kernels over local IPC (Unix-domain) sockets where the system has them: no TCP port is
    opened, and ipykernel's warning that "the kernel is running over TCP without encryption"
    does not apply. The sockets live under the temporary folder, one prefix per kernel, and
    jupyter_client removes them at shutdown. Elsewhere (Windows) papermill's default, TCP.
    ``env``: variables added to the kernel's environment (on top of this process's)."""
    if os.name != "posix":
        return None
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    extra = dict(env or {})

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = os.path.join(tempfile.gettempdir(), f"support-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if extra:
                kw["env"] = {**(kw.get("env") or os.environ), **extra}
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def execute(path: Path, output: Path, parameters: dict[str, Any], progress: bool = True,
            env: dict[str, str] | None = None) -> None:
    """Execute one notebook with papermill, from its own folder, into ``output``; ``env`` is
    added to the kernel's environment."""
    import papermill

    manager = _kernel_manager_class(env)
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(path.parent),
        progress_bar=progress,
        log_output=False,
        **({"kernel_manager_class": manager} if manager else {}),
    )


def default_jobs() -> int:
    """Notebooks run at once by default: 2 where there are at least 2 CPUs, else 1.

    The notebooks' models are small, so a kernel keeps about one core busy (much of a step is
    per-operation overhead, not arithmetic): two kernels on two cores finish the series sooner
    than one after the other. More would multiply the memory (about 1 GB per TensorFlow kernel)
    for little gain on a laptop."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _check_jobs(jobs) -> int:
    return checks.positive_int(jobs, "jobs")


# Each notebook's wall time at its defaults in the main job (benchmarks/series.py on 2 CPU
# cores, two at once with one TensorFlow thread each, 2026-12-07). Used only to order runs
# (:func:`run_order`): a stale or missing figure changes which notebook starts first, never a
# result. A notebook not listed counts 0 and starts after those that are.
EXPECTED_SECONDS = {"00_start_here": 9, "01_autoencoders": 88, "02_mse_objective": 111, "03_vae_elbo": 167,
                    "04_gan_training": 235, "05_diffusion": 223, "06_comparison": 345}

_READS = re.compile(r"""recorded\(\s*["']([0-9]{2}_\w+)["']""")


def reads_results_of(path: Path) -> set[str]:
    """The notebooks whose recorded results ``path``'s code reads with ``notebook.recorded``
    (notebook 05 sets notebook 04's GAN rows and 03's VAE beside its own): in a run of both,
    this one must start after they have finished, or it reads the committed numbers instead."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    return set(_READS.findall(code)) - {path.stem}


def run_order(names: Sequence[str], reads: Mapping[str, set[str]],
              seconds: Mapping[str, float] | None = None) -> tuple[list[int], list[list[int]]]:
    """For each run ``i`` of ``names``, the runs that must finish before it starts (those of
    the notebooks it reads, :func:`reads_results_of`), and a priority: the longest chain of
    expected seconds (``EXPECTED_SECONDS``) from it to the end of everything that waits on it.
    Returns ``(ranked, waits)``: the runs' indices, highest priority first (ties in the order
    asked for), and for each run the indices of the runs it waits for.

    Starting the run with the longest chain first is the critical-path rule of list
    scheduling: with two jobs, notebook 04 (which 05 waits for) and 03 start at once, and 06,
    the longest, starts as soon as a job is free. Measured on 2 cores (2026-12-07), the series
    took 601 s in this order; the same notebooks' times replayed in the plain order (00, 01, ...)
    give about 700 s, 06 starting last and running alone for its last 222 s (and 05 starting
    before 04, whose results it reads, had finished)."""
    seconds = EXPECTED_SECONDS if seconds is None else seconds
    waits = [[j for j, other in enumerate(names) if other in reads.get(name, set()) and other != name]
             for name in names]
    dependents = [[i for i, w in enumerate(waits) if j in w] for j in range(len(names))]
    chain: dict[int, float] = {}

    def longest(j: int) -> float:  # acyclic: a notebook reads only others, by name
        if j not in chain:
            chain[j] = seconds.get(names[j], 0.0) + max((longest(i) for i in dependents[j]), default=0.0)
        return chain[j]

    ranked = sorted(range(len(names)), key=lambda j: (-longest(j), j))
    return ranked, waits


def _run_plans(specs, given: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """Each notebook to run with its checked parameters; every check before the first run."""
    paths = [resolve(s) for s in specs] if specs else all_notebooks()
    if not paths:
        raise ValueError(f"no notebooks found in {notebooks_dir()}")
    unknown = set(given)
    plans = []
    for path in paths:
        unknown -= {p.name for p in nb_runtime.schema(path.stem)}
        try:
            plans.append((path, parameters_for(path, given)))
        except ValueError as exc:
            raise ValueError(f"{path.stem}: {exc}") from None
    if unknown:
        raise ValueError(
            f"unknown parameter {sorted(unknown)[0]!r}: no notebook run here declares it."
        )
    return plans


def run(
    specs: list[str] | None = None,
    given: dict[str, Any] | None = None,
    out: str | os.PathLike = "runs",
    progress: bool = True,
    stream=sys.stdout,
    jobs: int | None = None,
) -> list[Outcome]:
    """Execute notebooks; each writes ``<out>/<name>.ipynb`` and ``<out>/results/<name>.json``.

    Output is written under a temporary name and renamed when the notebook finishes: a
    notebook that fails is left as ``<name>.FAILED.ipynb``, never mistaken for a result.
    ``jobs`` notebooks run at once, each in its own kernel (``None``: :func:`default_jobs`);
    with more than one, papermill's progress bars are off (they would interleave), a line is
    printed as each notebook starts and ends, and the runs start in the order of
    :func:`run_order`: a notebook that reads another's results (:func:`reads_results_of`)
    waits for it, and among those free to start the one with the longest expected chain goes
    first. One job runs them in the order of ``specs``. The outcomes are in the order of
    ``specs`` either way, and each notebook's ``seconds`` is its own wall time, which grows when
    it shares the machine.
    """
    jobs = default_jobs() if jobs is None else _check_jobs(jobs)
    given = dict(given or {})
    plans = _run_plans(specs, given)
    out = Path(out).resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    jobs = min(jobs, len(plans))
    progress = progress and jobs == 1

    def one(i: int, path: Path, parameters: dict[str, Any]) -> Outcome:
        name = path.stem
        parameters = {**parameters, "results_dir": str(results)}
        final = out / f"{name}.ipynb"
        partial = out / f".{name}.running.ipynb"
        failed = out / f"{name}{FAILED_SUFFIX}"
        result_file = results / f"{name}.json"
        for stale in (final, failed, result_file):
            stale.unlink(missing_ok=True)
        _say(f"[{i}/{len(plans)}] {name}" + (" started" if jobs > 1 else ""), stream)
        began = time.perf_counter()
        try:
            execute(path, partial, parameters, progress=progress, env=thread_environment(jobs))
        except Exception as exc:  # papermill's errors carry the cell's exception
            seconds = time.perf_counter() - began
            if partial.exists():
                os.replace(partial, failed)
            outcome = Outcome(name, False, seconds, failed, {}, _describe(exc))
            _say(f"    {name + ' ' if jobs > 1 else ''}FAILED after {seconds:.0f} s: {outcome.error}", stream)
            return outcome
        seconds = time.perf_counter() - began
        os.replace(partial, final)
        metrics = json.loads(result_file.read_text())["metrics"] if result_file.exists() else {}
        _say(f"    {name + ' ' if jobs > 1 else ''}done in {seconds:.0f} s", stream)
        return Outcome(name, True, seconds, final, metrics)

    if jobs == 1:
        return [one(i, path, parameters) for i, (path, parameters) in enumerate(plans, 1)]
    return _run_scheduled(plans, jobs, one)


def _run_scheduled(plans, jobs: int, one: Callable[..., Outcome]) -> list[Outcome]:
    """``one(i, path, parameters)`` for every plan, ``jobs`` at a time, in :func:`run_order`:
    each free job takes the highest-ranked run whose notebooks to read have finished."""
    from concurrent.futures import ThreadPoolExecutor

    names = [path.stem for path, _ in plans]
    ranked, waits = run_order(names, {path.stem: reads_results_of(path) for path, _ in plans})
    outcomes: list[Outcome | None] = [None] * len(plans)
    pending, finished = list(ranked), set()
    ready = threading.Condition()

    def worker() -> None:
        while True:
            with ready:
                while True:
                    if not pending:
                        return
                    free = [j for j in pending if set(waits[j]) <= finished]
                    if free:
                        j = free[0]
                        pending.remove(j)
                        break
                    ready.wait()
            try:
                outcomes[j] = one(j + 1, *plans[j])
            finally:
                with ready:
                    finished.add(j)
                    ready.notify_all()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(worker) for _ in range(jobs)]:
            future.result()
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


# --------------------------------------------------------------------------- sweeps

MAX_PANELS = 12  # metrics drawn in results.png; results.csv has them all


def split_values(text: str) -> list[str]:
    """Split a sweep's ``-p`` values at the commas outside brackets.

    ``"0.25,1,4"`` gives three values and ``"[128, 64],[512, 256]"`` two lists: a comma inside
    ``[...]`` belongs to the list, so list-valued parameters are swept like any other.
    """
    items, current, depth = [], [], 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                break
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in the values {text!r}")
    items.append("".join(current).strip())
    if not all(items):
        raise ValueError(f"empty value in {text!r}: separate the values with single commas")
    return items


def parse_values(text: str) -> list[Any]:
    """The values of one swept parameter: each comma-separated item parsed by
    :func:`parse_value` (``"1,2.5,[2, 8]"`` → ``[1, 2.5, [2, 8]]``)."""
    return [parse_value(item) for item in split_values(text)]


def _name_part(value: Any) -> str:
    """A parameter value as it appears in a run folder's name."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        text = str(int(value))  # beta=1, not beta=1.0
    elif isinstance(value, (list, tuple)):
        text = "_".join(_name_part(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_name(parameters: Mapping[str, Any]) -> str:
    """The folder name of one run: ``beta=0.5,latent_dim=8`` (names sorted, so the order of
    the ``-p`` options does not matter; characters unsafe in file names become ``_``)."""
    return ",".join(f"{name}={_name_part(parameters[name])}" for name in sorted(parameters))


@dataclass
class SweepRun:
    """One point of a sweep's grid.

    ``status`` is ``"done"`` (executed now), ``"skipped"`` (completed by an earlier call),
    ``"failed"``, or ``"pending"`` before the sweep reaches it.
    """

    name: str
    parameters: dict[str, Any]
    folder: Path
    status: str = "pending"
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    output: Path | None = None

    @property
    def completed(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass
class SweepResult:
    notebook: str
    out: Path
    runs: list[SweepRun]
    csv: Path
    plot: Path | None

    @property
    def failed(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.runs) for s in ("done", "skipped", "failed")}
        return (f"{self.notebook}: {len(self.runs)} run(s): {counts['done']} executed, "
                f"{counts['skipped']} skipped (completed earlier), {counts['failed']} failed")


def plan_sweep(path: Path, grid: Mapping[str, Sequence[Any]], out: Path) -> list[SweepRun]:
    """The runs of ``grid`` (parameter → list of values) in Cartesian order, every point
    checked against the notebook's schema before anything runs.

    Raises ``ValueError`` naming the parameter and value for the first bad point.
    """
    notebook = path.stem
    if not grid:
        raise ValueError("a sweep needs at least one parameter and its values (-p NAME V1,V2)")
    for name, values in grid.items():
        if name == "results_dir":
            raise ValueError("results_dir cannot be swept: each run writes its results into "
                             "its own folder under the sweep's output folder")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"the values of {name} must be a non-empty list, not {values!r} "
                             "(a list-valued parameter takes a list of lists)")
    names = list(grid)
    runs: dict[str, SweepRun] = {}
    for combination in itertools.product(*(grid[n] for n in names)):
        try:
            checked = nb_runtime.validate(notebook, dict(zip(names, combination)))
        except ValueError as exc:
            raise ValueError(f"{notebook}: {exc}") from None
        parameters = {n: checked[n] for n in names}
        name = run_name(parameters)
        if name in runs:
            raise ValueError(
                f"two runs of the sweep would share the folder {name!r} "
                f"({runs[name].parameters} and {parameters}): give each value once"
            )
        runs[name] = SweepRun(name, parameters, out / name)
    return list(runs.values())


def sweep(
    notebook: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    out: str | os.PathLike | None = None,
    progress: bool = True,
    stream=sys.stdout,
) -> SweepResult:
    """Execute ``notebook`` once per point of the Cartesian grid of ``grid``'s values.

    Each run gets the folder ``<out>/<name>/`` (``out`` defaults to ``sweeps/<notebook>``,
    ``name`` from :func:`run_name`) holding the executed ``<notebook>.ipynb`` and the
    ``<notebook>.json`` that ``record()`` writes there (``results_dir`` points at the folder).
    A list-valued parameter is swept over a list of lists: ``{"widths": [[128], [256, 64]]}``.

    Every point is validated before the first run. A failing run does not stop the sweep:
    its partial notebook is kept as ``<notebook>.FAILED.ipynb`` (and what it recorded as
    ``<notebook>.FAILED.json``). A run is complete when its executed notebook and results
    both exist; the notebook is renamed into place only after its last cell succeeded, so an
    interrupted run is never complete, and a second call with the same ``out`` skips the
    complete runs. Finally ``<out>/results.csv`` (one row per complete run: the swept
    parameters, then the flattened metrics, then ``wall_time_s``) and ``<out>/results.png``
    are (re)written atomically from every complete run of the grid.

    ``progress`` prints a line per run to ``stream`` and papermill's progress bar.
    """
    path = resolve(os.fspath(notebook))
    out = Path(out if out is not None else Path("sweeps") / path.stem).resolve()
    runs = plan_sweep(path, grid, out)
    for i, item in enumerate(runs, 1):
        if progress:
            print(f"[{i}/{len(runs)}] {item.name}", file=stream, flush=True)
        if _load_complete(item, path.stem):
            item.status = "skipped"
            if progress:
                print("    skipped: completed by an earlier sweep", file=stream, flush=True)
            continue
        _execute_run(item, path, progress)
        if progress:
            if item.completed:
                print(f"    done in {item.seconds:.0f} s", file=stream, flush=True)
            else:
                print(f"    FAILED after {item.seconds:.0f} s: {item.error}", file=stream,
                      flush=True)
    out.mkdir(parents=True, exist_ok=True)
    names = list(grid)
    rows = [{**r.parameters, **nb_runtime.flatten(r.metrics), "wall_time_s": round(r.seconds, 1)}
            for r in runs if r.completed]
    csv_path = out / "results.csv"
    _write_atomic(csv_path, lambda tmp: _write_csv(tmp, names, rows))
    plot_path = out / "results.png"
    figure = sweep_figure(path.stem, names, rows)
    if figure is None:
        plot_path.unlink(missing_ok=True)  # a stale plot would disagree with the CSV
        plot_path = None
    else:
        _write_atomic(plot_path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return SweepResult(path.stem, out, runs, csv_path, plot_path)


def _run_files(folder: Path, notebook: str) -> dict[str, Path]:
    return {
        "executed": folder / f"{notebook}.ipynb",
        "results": folder / f"{notebook}.json",
        "running": folder / f".{notebook}.running.ipynb",
        "failed": folder / f"{notebook}{FAILED_SUFFIX}",
        "failed_results": folder / f"{notebook}.FAILED.json",
    }


def _load_complete(item: SweepRun, notebook: str) -> bool:
    """Fill ``item`` from an earlier complete run of the same parameters, if there is one."""
    files = _run_files(item.folder, notebook)
    if not (files["executed"].is_file() and files["results"].is_file()):
        return False
    try:
        document = json.loads(files["results"].read_text())
        executed = json.loads(files["executed"].read_text())
    except (OSError, json.JSONDecodeError):
        return False
    recorded = document.get("parameters", {})
    if any(recorded.get(name) != value for name, value in item.parameters.items()):
        return False  # a folder name shared by other values (after making names file-safe)
    item.metrics = document.get("metrics", {})
    item.seconds = executed.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
    item.output = files["executed"]
    return True


def _execute_run(item: SweepRun, path: Path, progress: bool) -> None:
    files = _run_files(item.folder, path.stem)
    item.folder.mkdir(parents=True, exist_ok=True)
    for stale in files.values():
        stale.unlink(missing_ok=True)
    parameters = {**item.parameters, "results_dir": str(item.folder)}
    began = time.perf_counter()
    try:
        execute(path, files["running"], parameters, progress=progress)
        if not files["results"].is_file():
            raise RuntimeError(f"the notebook ran to the end but recorded no results "
                               f"({files['results'].name} is missing)")
        item.metrics = json.loads(files["results"].read_text()).get("metrics", {})
    except Exception as exc:  # papermill's errors carry the cell's exception
        item.seconds = time.perf_counter() - began
        item.status, item.error = "failed", _describe(exc)
        if files["running"].exists():
            os.replace(files["running"], files["failed"])
        if files["results"].exists():
            os.replace(files["results"], files["failed_results"])
        item.output = files["failed"]
        return
    item.seconds = time.perf_counter() - began
    os.replace(files["running"], files["executed"])
    item.status, item.output = "done", files["executed"]


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(temporary_path)`` and rename: never half a file."""
    tmp = str(path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else value


def _write_csv(path: str, names: list[str], rows: list[dict[str, Any]]) -> None:
    columns = list(names)
    for row in rows:
        columns += [c for c in row if c not in columns and c != "wall_time_s"]
    columns.append("wall_time_s")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])


def sweep_figure(notebook: str, names: list[str], rows: list[dict[str, Any]]):
    """One small panel per numeric metric (those that vary across runs first, at most
    ``MAX_PANELS``) against the first parameter with several values; one line per
    combination of the other varying parameters. ``None`` when there is nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = []
    for row in rows:
        metrics += [c for c in row if c not in names and c != "wall_time_s" and c not in metrics]
    numeric = [m for m in metrics if all(checks.is_number(r[m]) for r in rows if m in r)]
    varying = [m for m in numeric if len({r[m] for r in rows if m in r}) > 1]
    chosen = (varying or numeric)[:MAX_PANELS]
    if not rows or not chosen:
        return None
    swept = [n for n in names if len({json.dumps(r[n]) for r in rows}) > 1] or names[:1]
    x_name, series = swept[0], swept[1:]
    numeric_x = all(checks.is_number(r[x_name]) for r in rows)
    labels = list(dict.fromkeys(_name_part(r[x_name]) for r in rows))

    def x_of(row):
        return row[x_name] if numeric_x else labels.index(_name_part(row[x_name]))

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = ", ".join(f"{n}={_name_part(row[n])}" for n in series)
        groups.setdefault(key, []).append(row)
    columns = min(3, len(chosen))
    lines = math.ceil(len(chosen) / columns)
    figure = Figure(figsize=(4 * columns, 3 * lines + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    xs = [x_of(r) for r in rows]
    log_x = numeric_x and min(xs) > 0 and max(xs) / min(xs) >= 10
    for ax, metric in zip(axes, chosen):
        for key, members in groups.items():
            points = sorted((x_of(r), r[metric]) for r in members if metric in r)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key or None)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(x_name)
        ax.set_ylabel(metric.rsplit(".", 1)[-1])
        if log_x:
            ax.set_xscale("log")
        if not numeric_x:
            ax.set_xticks(range(len(labels)), labels)
        elif len(set(xs)) <= 8:  # a tick at each swept value, written as in the folder names
            ax.set_xticks(sorted(set(xs)), [_name_part(x) for x in sorted(set(xs))])
            ax.set_xticks([], minor=True)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    if len(groups) > 1:
        axes[0].legend(title=", ".join(series), fontsize=7, title_fontsize=7)
    title = f"{notebook}: {len(rows)} run(s), metrics against {x_name}"
    if len(varying) > MAX_PANELS:
        title += f" (first {MAX_PANELS} of {len(varying)} varying metrics; all in results.csv)"
    figure.suptitle(title)
    return figure


def sweep_failure_report(result: SweepResult) -> str:
    failed = result.failed
    lines = [f"{len(failed)} of {len(result.runs)} run(s) of {result.notebook} failed:"]
    lines += [f"  {r.name}: {r.error}\n    (partial output: {r.output})" for r in failed]
    return "\n".join(lines)


# --------------------------------------------------------------------------- committed notebooks


def normalise(notebook) -> None:
    """Tidy an executed notebook for committing: drop papermill's and Jupyter's per-run
    metadata, keep tags, give every cell a stable id, set the standard kernel metadata.

    A code cell whose first line is a Colab form title (``#@title What it shows``) is a
    cell whose only job is the prose or a figure's wiring: its source is hidden in JupyterLab
    (``jupyter.source_hidden``) and shown as a form in Colab (``cellView: form``); its
    output stays visible. Every other cell's source is shown.
    """
    keep_cell_metadata = {"tags"}
    for index, cell in enumerate(notebook.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in keep_cell_metadata}
        if cell.cell_type == "code" and cell.source.lstrip().startswith("#@title"):
            cell.metadata["jupyter"] = {"source_hidden": True}
            cell.metadata["cellView"] = "form"
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


def parameters_cell(notebook, name: str):
    """The cell tagged ``parameters`` of ``notebook`` (named ``name`` in errors)."""
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{name}: {len(cells)} cells are tagged 'parameters'; tag exactly one "
                         f"(the cell right after the notebook's title)")
    return cells[0]


def sync_parameters(notebook, name: str) -> bool:
    """Write the parameters cell of ``notebook`` from its schema (:func:`support.notebook.
    parameters_source`); ``True`` when it changed."""
    cell = parameters_cell(notebook, name)
    source = nb_runtime.parameters_source(name)
    if cell.source == source:
        return False
    cell.source = source
    return True


def check(path: Path) -> list[str]:
    """What ``normalise --check`` finds wrong with one committed notebook, as sentences: a
    parameters cell out of step with its schema, metadata :func:`normalise` would change,
    missing, duplicate or run-specific cell ids, code cells not executed in order (1, 2, 3, ...
    from top to bottom, every code cell once), and error outputs. Empty when it is tidy."""
    import copy
    import warnings

    import nbformat

    path = Path(path)
    with warnings.catch_warnings():  # nbformat warns of repeated ids as it repairs them; we name them
        warnings.simplefilter("ignore", nbformat.warnings.DuplicateCellId)
        notebook = nbformat.read(path, as_version=4)
    problems = []
    try:
        if parameters_cell(notebook, path.stem).source != nb_runtime.parameters_source(path.stem):
            problems.append("its parameters cell differs from the schema in support/notebook.py "
                            "(python -m support normalise writes it)")
    except ValueError as error:
        problems.append(str(error))
    tidy = copy.deepcopy(notebook)
    normalise(tidy)
    if tidy.metadata != notebook.metadata:
        problems.append("its notebook metadata is not the standard one (python -m support normalise)")
    for index, (cell, clean) in enumerate(zip(notebook.cells, tidy.cells)):
        if cell.metadata != clean.metadata:
            extra = sorted(set(cell.metadata) ^ set(clean.metadata)) or sorted(cell.metadata)
            problems.append(f"cell {index} has metadata normalise would change ({', '.join(extra)})")
        for output in cell.get("outputs", []):
            if "papermill" in output.get("metadata", {}):
                problems.append(f"cell {index} has papermill output metadata")
            if output.get("output_type") == "error":
                problems.append(f"cell {index} shows an error: {output.get('ename')}")
    # from the file itself: nbformat's reader silently renumbers repeated ids
    ids = [cell.get("id") for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    if any(not i or i.startswith("papermill") for i in ids):
        problems.append("some cells have no id or a run-specific papermill id (python -m support "
                        "normalise gives stable ones)")
    duplicates = sorted({i for i in ids if i and ids.count(i) > 1})
    if duplicates:
        problems.append(f"cell ids are repeated: {', '.join(duplicates)}")
    counts = [cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        first = next(i for i, c in enumerate(counts) if c != i + 1)
        problems.append(f"code cells are not executed in order (code cell {first} has execution "
                        f"count {counts[first]}, expected {first + 1}); regenerate it with "
                        f"python -m support regenerate {path.stem}")
    return problems


def normalise_files(specs: list[str] | None = None, check_only: bool = False) -> dict[Path, list[str]]:
    """``python -m support normalise [--check]``: bring each committed notebook's parameters cell
    in line with its schema and normalise its metadata, without executing anything (with
    ``check_only``, change nothing). Returns ``{path: problems}`` of the notebooks that fail
    the check: with ``check_only`` everything :func:`check` finds; otherwise only what
    writing cannot fix (the execution order, error outputs: regenerate those)."""
    import nbformat

    found = {}
    for path in [resolve(s) for s in specs] if specs else all_notebooks():
        if not check_only:
            notebook = nbformat.read(path, as_version=4)
            before = nbformat.writes(notebook)
            sync_parameters(notebook, path.stem)
            normalise(notebook)
            if nbformat.writes(notebook) != before:
                nbformat.validate(notebook)
                nbformat.write(notebook, path)
        problems = check(path)
        if problems:
            found[path] = problems
    return found


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
            source = nbformat.read(path, as_version=4)
            if sync_parameters(source, path.stem):  # run at the schema's defaults
                nbformat.write(source, tmp)
                execute(tmp, tmp, {}, progress=progress)
            else:
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



# --------------------------------------------------------------------------- the README's picture

PANEL_TAG = "readme-panel"
PANEL_DPI = 110
PANEL_COLUMN_PX = 720  # wider figures are scaled down to this width; narrower ones keep theirs
PANEL_MARGIN_PX = 16
PANEL_TITLE_PX = 26  # the line above each panel, "(a) notebook 01_autoencoders"


def panel_figures(paths: list[Path] | None = None) -> list[tuple[str, Any]]:
    """The figures of the cells tagged ``readme-panel``, in notebook then cell order: a list of
    ``(notebook stem, RGB float array in [0, 1])``, each cell's first ``image/png`` output
    composited onto white. A tagged cell without an image is an error that names it."""
    import base64
    import io

    import matplotlib.image as mpimg
    import nbformat
    import numpy as np

    figures = []
    for path in paths or all_notebooks():
        path = Path(path)
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if PANEL_TAG not in cell.metadata.get("tags", []):
                continue
            pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                    if "image/png" in o.get("data", {})]
            if not pngs:
                raise ValueError(f"{path.name}: cell {cell.get('id', index)!r} is tagged "
                                 f"{PANEL_TAG!r} but has no image/png output (execute the "
                                 f"notebook, or remove the tag)")
            image = mpimg.imread(io.BytesIO(base64.b64decode(pngs[0])), format="png")
            image = image.astype(np.float64)
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            if image.shape[-1] == 4:
                alpha = image[..., 3:]
                image = image[..., :3] * alpha + (1 - alpha)
            figures.append((path.stem, image))
    return figures


def _resize_matrix(size: int, new_size: int):
    """The ``new_size × size`` matrix of area weights that shrinks a line of ``size`` pixels to
    ``new_size`` (each new pixel averages the old ones it covers, by covered length)."""
    import numpy as np

    edges = np.linspace(0, size, new_size + 1)
    left, right = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(right, pixels + 1) - np.maximum(left, pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _fit_width(image, width: int):
    """``image`` scaled down (area average, aspect kept) to at most ``width`` pixels wide."""
    import numpy as np

    height, old_width = image.shape[:2]
    if old_width <= width:
        return image
    new_height = max(1, round(height * width / old_width))
    rows, columns = _resize_matrix(height, new_height), _resize_matrix(old_width, width)
    return np.stack([rows @ image[..., c] @ columns.T for c in range(image.shape[-1])], axis=-1)


def panel_figure(figures: list[tuple[str, Any]]):
    """One matplotlib figure of the given ``(notebook stem, image)`` panels in a grid of two
    columns, each panel drawn pixel for pixel (scaled down only if wider than
    ``PANEL_COLUMN_PX``, aspect kept) under its title, "(a) notebook 01_autoencoders"; a lone
    last panel is centred. Save it at ``PANEL_DPI``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not figures:
        raise ValueError(f"no cell is tagged {PANEL_TAG!r}: nothing to draw")
    images = [_fit_width(image, PANEL_COLUMN_PX) for _, image in figures]
    columns = 1 if len(images) == 1 else 2
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    column_px = max(image.shape[1] for image in images)
    row_px = [PANEL_TITLE_PX + max(image.shape[0] for image in row) for row in rows]
    width = columns * column_px + (columns + 1) * PANEL_MARGIN_PX
    height = sum(row_px) + (len(rows) + 1) * PANEL_MARGIN_PX
    figure = Figure(figsize=(width / PANEL_DPI, height / PANEL_DPI), dpi=PANEL_DPI,
                    facecolor="white")
    FigureCanvasAgg(figure)
    top = height - PANEL_MARGIN_PX  # pixels from the bottom, where matplotlib counts from
    number = 0
    for row, row_height in zip(rows, row_px):
        row_width = len(row) * column_px + (len(row) - 1) * PANEL_MARGIN_PX
        left = (width - row_width) // 2
        for image in row:
            stem = figures[number][0]
            centre = left + column_px // 2
            label = f"({chr(ord('a') + number % 26)}) notebook {stem}"
            figure.text(centre / width, (top - PANEL_TITLE_PX / 2) / height, label,
                        ha="center", va="center", fontsize=10, color="0.2")
            x = centre - image.shape[1] // 2
            y = top - PANEL_TITLE_PX - image.shape[0]
            figure.figimage(image.clip(0, 1), xo=x, yo=y, origin="upper", resize=False)
            left += column_px + PANEL_MARGIN_PX
            number += 1
        top -= row_height + PANEL_MARGIN_PX
    return figure


def write_panel(paths: list[Path] | None = None, out: Path | str | None = None) -> Path:
    """Compose the README's picture, ``docs/series.png``, from the figure outputs of the cells
    tagged ``readme-panel`` in the committed notebooks (``paths``, default all), in notebook
    then cell order (see :func:`panel_figure`). Written atomically and reproducibly (no
    timestamp or software name in the file); reads only the notebooks, so it takes seconds.
    Behind ``python -m support panel``, and run at the end of ``regenerate``."""
    out = Path(out) if out is not None else nb_runtime.project_root() / "docs" / "series.png"
    figure = panel_figure(panel_figures(paths))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, lambda tmp: figure.savefig(
        tmp, format="png", dpi=PANEL_DPI, metadata={"Software": None}))
    return out

def failure_report(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok]
    lines = [f"{len(failed)} notebook(s) failed:"]
    lines += [f"  {o.notebook}: {o.error}\n    (partial output: {o.output})" for o in failed]
    return "\n".join(lines)

