"""The notebooks as users run them: papermill reruns with other parameters, bad parameters,
``--help-notebook``, and the committed copies as a learner opens them."""

import json
import os
import subprocess
import sys

import nbformat
import papermill
import pytest

from .conftest import NOTEBOOKS


def execute(name, tmp_path, **parameters):
    """Run a notebook from its folder with papermill; return its recorded metrics."""
    results = tmp_path / "results"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={**parameters, "results_dir": str(results)},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
    )
    return json.loads((results / f"{name}.json").read_text())["metrics"]


@pytest.mark.parametrize("dataset,n_train,n_test", [
    ("mnist", 60_000, 10_000), ("fashion_mnist", 60_000, 10_000)])
def test_start_here_on_the_real_data_sets(tmp_path, data_dir, dataset, n_train, n_test):
    metrics = execute("00_start_here", tmp_path, dataset=dataset, samples=8)
    assert metrics["n_train"] == n_train and metrics["n_test"] == n_test
    assert metrics["image_shape"] == [28, 28, 1]
    assert metrics["rarest_class_fraction"] > 0.09  # both are close to balanced
    assert 0.1 < metrics["mean_pixel_train"] < 0.35


def test_start_here_other_mixture_size(tmp_path):
    metrics = execute("00_start_here", tmp_path, mixture_samples=20_000, seed=5)
    # real samples fall within 3 sigma of their mode with probability 1 - exp(-9/2) = 0.9889
    for name in ("ring8_within_3sigma", "grid25_within_3sigma"):
        assert abs(metrics[name] - 0.98889) < 4 * (0.9889 * 0.0111 / 20_000) ** 0.5


@pytest.mark.parametrize("name,value,allowed", [
    ("dataset", "cifar", "one of 'digits', 'mnist', 'fashion_mnist'"),
    ("samples", 0, "an integer from 1 to 200"),
    ("samples", "many", "an integer from 1 to 200"),
])
def test_bad_parameter_stops_with_a_clear_message(tmp_path, name, value, allowed):
    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute("00_start_here", tmp_path, **{name: value})
    assert info.value.ename == "ValueError"
    assert f"parameter {name}={value!r} is not allowed" in info.value.evalue
    assert allowed in info.value.evalue
    assert not (tmp_path / "results").exists()


def test_help_notebook_lists_types_and_comments():
    done = subprocess.run(
        [sys.executable, "-m", "papermill", "--help-notebook",
         str(NOTEBOOKS / "00_start_here.ipynb")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    assert 'dataset: str (default "digits")' in done.stdout
    assert "image data set to look at: digits, mnist or fashion_mnist" in done.stdout
    assert "samples: int (default 32)" in done.stdout


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_is_executed_in_order_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert path.stat().st_size < 2 * 1024 * 1024
    assert len({c["id"] for c in nb.cells}) == len(nb.cells)
    tags = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tags) == 1
