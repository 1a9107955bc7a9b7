"""Shared test set-up: no downloads, the reference data folder when it exists, temp outputs."""

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# No test downloads anything: the loader must find files or fail with its offline error.
os.environ["SUPPORT_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_shared = ROOT.parent / "shared" / "data"
if "SUPPORT_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["SUPPORT_DATA_DIR"] = str(_shared)


def shared_data_dir() -> Path | None:
    value = os.environ.get("SUPPORT_DATA_DIR")
    if value and (Path(value) / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        return Path(value)
    return None


@pytest.fixture
def data_dir() -> Path:
    """The folder with the original MNIST / Fashion-MNIST files; skips the test without it."""
    found = shared_data_dir()
    if found is None:
        pytest.skip(
            "needs the original MNIST/Fashion-MNIST IDX files: set SUPPORT_DATA_DIR to a folder "
            "with mnist/ and fashion-mnist/ (CI uses ../shared/data)"
        )
    return found


# --------------------------------------------------------------------------- one run at defaults

SESSION_START = time.time()


# Modules whose every test executes notebooks (papermill reruns, the exercises' solutions, the
# browser): the fast lane (`pytest -m "not slow"`) leaves them out, with nbval's executions.
SLOW_MODULES = {"test_notebooks.py", "test_exercises.py", "test_browser.py"}


def pytest_collection_modifyitems(session, config, items):
    """Mark notebook executions ``slow``, and run the notebooks under nbval first, so that the
    quality-gate tests can read the metrics those executions recorded instead of running each
    notebook at its defaults a second time (see :func:`default_run_metrics`)."""
    notebooks = [item for item in items if Path(str(item.fspath)).parent == NOTEBOOKS]
    others = [item for item in items if Path(str(item.fspath)).parent != NOTEBOOKS]
    for item in items:
        if item in notebooks or Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    items[:] = notebooks + others


def default_run_metrics(name: str, tmp_path: Path, execute) -> dict:
    """The metrics of ``name`` executed at its default parameters in this test session.

    nbval executes every notebook at its defaults from ``notebooks/``, and the summary cell
    writes ``notebooks/results/<name>.json``. When that file was written during this session
    with exactly the default parameters, its metrics are used; otherwise (nbval not selected,
    or its run failed before the summary) the notebook is executed here with papermill.
    Either way the gates judge a fresh execution of the current code.
    """
    from support import notebook

    path = NOTEBOOKS / "results" / f"{name}.json"
    defaults = {p.name: p.default for p in notebook.schema(name)}
    if path.is_file() and path.stat().st_mtime >= SESSION_START:
        document = json.loads(path.read_text())
        recorded = {k: v for k, v in document["parameters"].items() if k != "results_dir"}
        if recorded == {k: v for k, v in defaults.items() if k != "results_dir"}:
            return document["metrics"]
    return execute(name, tmp_path)
