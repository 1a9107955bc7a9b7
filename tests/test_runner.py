import json
import subprocess
import sys

import nbformat
import pytest

from support import runner

from .conftest import NOTEBOOKS, ROOT


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "support", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_parse_value_like_papermill():
    assert runner.parse_value("16") == 16
    assert runner.parse_value("1e-3") == 0.001
    assert runner.parse_value("2.5") == 2.5
    assert runner.parse_value("mnist") == "mnist"
    assert runner.parse_value("True") is True
    assert runner.parse_value("[2, 8]") == [2, 8]


def test_resolve_by_number_name_and_path():
    path = NOTEBOOKS / "00_start_here.ipynb"
    assert runner.resolve("00") == path
    assert runner.resolve("00_start_here") == path
    assert runner.resolve(str(path)) == path
    with pytest.raises(ValueError, match="notebook '99' not found; the notebooks are: 00_start"):
        runner.resolve("99")


def test_cli_run_prints_the_results_table(tmp_path):
    done = cli("run", "00", "-p", "samples", "8", "--out", str(tmp_path), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "00_start_here  n_train" in done.stdout and "1437" in done.stdout
    assert (tmp_path / "00_start_here.ipynb").is_file()
    document = json.loads((tmp_path / "results" / "00_start_here.json").read_text())
    assert document["parameters"]["samples"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_start_here.ipynb", "results"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["-p", "dataset", "cifar"],
         "00_start_here: parameter dataset='cifar' is not allowed: dataset must be one of "
         "'digits', 'mnist', 'fashion_mnist'"),
        (["-p", "samples", "2.5"], "parameter samples=2.5"),
        (["-p", "no_such", "1"], "unknown parameter 'no_such'"),
    ],
)
def test_cli_rejects_bad_parameters_before_starting(tmp_path, args, message):
    done = cli("run", "00", *args, "--out", str(tmp_path))
    assert done.returncode == 2
    assert message in done.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_failing_notebook_is_named_and_its_output_marked(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "00_start_here.ipynb", as_version=4)
    nb.cells.insert(5, nbformat.v4.new_code_cell('raise RuntimeError("boom in cell")'))
    source = tmp_path / "src" / "00_start_here.ipynb"
    source.parent.mkdir()
    nbformat.write(nb, source)
    out = tmp_path / "out"
    done = cli("run", str(source), "--out", str(out), "--no-progress")
    assert done.returncode == 1
    assert "00_start_here: RuntimeError: boom in cell" in done.stderr
    assert (out / "00_start_here.FAILED.ipynb").is_file()
    assert not (out / "00_start_here.ipynb").exists()
    assert not (out / "results" / "00_start_here.json").exists()


def test_normalise_keeps_tags_and_gives_stable_ids():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"], "papermill": {}}),
        nbformat.v4.new_markdown_cell("text"),
    ])
    nb.cells[1]["id"] = "papermill-1"
    nb.metadata["papermill"] = {"duration": 1}
    runner.normalise(nb)
    assert nb.cells[0].metadata == {"tags": ["parameters"]}
    assert nb.cells[1]["id"] == "cell-01"
    assert "papermill" not in nb.metadata and nb.metadata["kernelspec"]["name"] == "python3"
