import json
import subprocess
import sys

import nbformat
import pytest

from support import notebook, runner

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
    # the kernel runs over local sockets: no warning about unencrypted TCP
    assert "TCP" not in done.stderr and "TCP" not in done.stdout


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


def test_two_notebooks_run_at_once_and_report_in_order(tmp_path):
    """``jobs=2``: both notebooks start before either ends (sequentially, 01 would start only
    after 00 is done), and the outcomes keep the order asked for."""
    import io

    small = {"samples": 20, "train_size": 300, "latent_dims": [2], "linear_dims": [2], "linear_epochs": 2,
             "epochs": 1}
    stream = io.StringIO()
    outcomes = runner.run(["00", "01"], small, out=tmp_path, stream=stream, jobs=2)
    assert [(o.notebook, o.ok) for o in outcomes] == [("00_start_here", True), ("01_autoencoders", True)]
    lines = stream.getvalue().splitlines()
    started = [i for i, line in enumerate(lines) if line.endswith(" started")]
    done = [i for i, line in enumerate(lines) if " done in " in line]
    assert len(started) == len(done) == 2 and max(started) < min(done), lines
    for name in ("00_start_here", "01_autoencoders"):
        assert (tmp_path / f"{name}.ipynb").is_file()
        assert json.loads((tmp_path / "results" / f"{name}.json").read_text())["metrics"]
    assert outcomes[1].metrics["pca_test_mse"]["2"] > 0  # the outcome carries the notebook's metrics


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_run_rejects_a_bad_jobs_count(tmp_path, jobs):
    with pytest.raises(ValueError, match=f"jobs={jobs!r} must be a positive integer"):
        runner.run(["00"], {}, out=tmp_path / "out", jobs=jobs)
    assert not (tmp_path / "out").exists()


def test_default_jobs_is_two_with_two_cpus(monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner.default_jobs() == 2
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 1)
    assert runner.default_jobs() == 1


def test_processes_sharing_the_machine_share_its_threads(monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    for name in runner.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert runner.thread_environment(1) == {}  # alone: TensorFlow's own default
    assert runner.thread_environment(2) == {name: "4" for name in runner.THREAD_VARIABLES}
    assert runner.thread_environment(16) == {name: "1" for name in runner.THREAD_VARIABLES}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what the user set is left alone
    assert "OMP_NUM_THREADS" not in runner.thread_environment(2)
    with pytest.raises(ValueError, match="jobs"):
        runner.thread_environment(0)


@pytest.mark.skipif(runner.os.name != "posix", reason="the environment goes through the IPC kernel manager")
def test_a_kernel_started_with_an_environment_sees_it(tmp_path):
    nb = nbformat.v4.new_notebook()
    seen = tmp_path / "seen.txt"
    nb.cells = [nbformat.v4.new_code_cell(
        f"import os; open({str(seen)!r}, 'w').write(os.environ.get('SUPPORT_TEST_THREADS', '-'))")]
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    runner.execute(tmp_path / "tiny.ipynb", tmp_path / "out.ipynb", {}, progress=False,
                   env={"SUPPORT_TEST_THREADS": "3"})
    assert seen.read_text() == "3"


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


def test_normalise_hides_the_source_of_prose_cells_only():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#@title The result, in words\nshow_markdown('...')",
                                  metadata={"jupyter": {"outputs_hidden": True}}),
        nbformat.v4.new_code_cell("model.fit(x)  #@title in a comment is not a form"),
    ])
    runner.normalise(nb)
    assert nb.cells[0].metadata == {"jupyter": {"source_hidden": True}, "cellView": "form"}
    assert nb.cells[1].metadata == {}


def test_the_committed_notebooks_pass_the_normalise_check():
    """What CI checks of every committed notebook: parameters cell generated from its schema,
    standard metadata, stable unique ids, executed top to bottom, no error output."""
    done = cli("normalise", "--check")
    assert done.returncode == 0, done.stderr
    assert "all in order" in done.stdout


def test_every_parameters_cell_is_the_schemas_text():
    for path in runner.all_notebooks():
        cell = runner.parameters_cell(nbformat.read(path, as_version=4), path.stem)
        assert cell.source == notebook.parameters_source(path.stem), path.name


def _untidy_copy(tmp_path):
    """A copy of 00_start_here, as committed, to spoil one way at a time."""
    return nbformat.read(NOTEBOOKS / "00_start_here.ipynb", as_version=4), tmp_path / "00_start_here.ipynb"


@pytest.mark.parametrize("spoil,expected", [
    (lambda nb: setattr(runner.parameters_cell(nb, "00_start_here"), "source", "samples: int = 9  # n"),
     "parameters cell differs from the schema"),
    (lambda nb: nb.metadata.update(papermill={"duration": 3.0}), "notebook metadata is not the standard"),
    (lambda nb: nb.cells[4].metadata.update(execution={"iopub.status.busy": "x"}),
     "cell 4 has metadata normalise would change (execution)"),
    (lambda nb: nb.cells[5].update(id=nb.cells[4]["id"]), "cell ids are repeated"),
    (lambda nb: nb.cells[6].update(id="papermill-abc"), "run-specific papermill id"),
    (lambda nb: [c for c in nb.cells if c.cell_type == "code"][3].update(execution_count=9),
     "code cell 3 has execution count 9, expected 4"),
    (lambda nb: [c for c in nb.cells if c.cell_type == "code"][2].update(execution_count=None),
     "not executed in order"),
])
def test_normalise_check_names_each_problem_and_changes_nothing(tmp_path, spoil, expected):
    nb, path = _untidy_copy(tmp_path)
    spoil(nb)
    path.write_text(json.dumps(nb, indent=1))  # as written by hand: nbformat.write would repair ids
    before = path.read_bytes()
    problems = runner.normalise_files([str(path)], check_only=True)
    assert any(expected in problem for problem in problems[path]), problems
    assert path.read_bytes() == before


def test_normalise_writes_the_parameters_cell_and_metadata_but_not_the_execution(tmp_path):
    nb, path = _untidy_copy(tmp_path)
    runner.parameters_cell(nb, "00_start_here").source = "samples: int = 9  # n"
    nb.metadata["papermill"] = {"duration": 3.0}
    nb.cells[3].update(execution_count=99)
    nbformat.write(nb, path)
    problems = runner.normalise_files([str(path)])
    fixed = nbformat.read(path, as_version=4)
    cell = runner.parameters_cell(fixed, "00_start_here")
    assert cell.source == notebook.parameters_source("00_start_here")
    assert "papermill" not in fixed.metadata
    assert [p for p in problems[path]] and all("executed in order" in p for p in problems[path])


def test_normalise_check_fails_on_the_command_line_naming_the_notebook(tmp_path):
    nb, path = _untidy_copy(tmp_path)
    nb.metadata["papermill"] = {}
    nbformat.write(nb, path)
    done = cli("normalise", "--check", str(path))
    assert done.returncode == 1
    assert "00_start_here.ipynb: its notebook metadata is not the standard one" in done.stderr


# --------------------------------------------------------------------------- sweeps
#
# The sweeps run a tiny stand-in for 00_start_here (the schema is looked up by the notebook's
# name): it declares the same parameters and writes the results file that record() would, without
# importing `support` (and so TensorFlow) in its kernel, so that each run takes about a second.

TINY_SOURCE = """\
import json
import os

if samples == 13:
    raise RuntimeError("unlucky samples")
metrics = {"square": samples**2, "half": samples / 2, "constant": 1, "label": "text",
           "parts": {"offset": samples + seed}}
parameters = {"dataset": dataset, "samples": samples, "mixture_samples": mixture_samples,
              "seed": seed, "results_dir": results_dir}
with open(os.path.join(results_dir, "00_start_here.json"), "w") as f:
    json.dump({"notebook": "00_start_here", "parameters": parameters, "metrics": metrics}, f)
"""


@pytest.fixture
def tiny(tmp_path):
    parameters = nbformat.v4.new_code_cell(
        'dataset = "digits"\nsamples = 32\nmixture_samples = 2500\nseed = 0\n'
        'results_dir = "results"',
        metadata={"tags": ["parameters"]},
    )
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(TINY_SOURCE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = tmp_path / "src" / "00_start_here.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def sweep_cli(*args):
    from support.__main__ import main

    return main(["sweep", *args])


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_values_split_at_commas_outside_brackets():
    assert runner.parse_values("0.25,1,4") == [0.25, 1, 4]
    assert runner.parse_values("[128, 64],[512, 256]") == [[128, 64], [512, 256]]
    assert runner.parse_values("dense, conv") == ["dense", "conv"]
    assert runner.parse_values("8") == [8]
    with pytest.raises(ValueError, match="unbalanced brackets"):
        runner.parse_values("[1, 2")
    with pytest.raises(ValueError, match="empty value in '1,,2'"):
        runner.parse_values("1,,2")


def test_run_names_are_sorted_and_file_safe():
    assert runner.run_name({"latent_dim": 8, "beta": 0.5}) == "beta=0.5,latent_dim=8"
    assert runner.run_name({"beta": 1.0, "lr": 1e-05}) == "beta=1,lr=1e-05"
    assert runner.run_name({"widths": [128, 64], "dataset": "a/b c"}) == (
        "dataset=a_b_c,widths=128_64")


def test_sweep_plan_checks_every_point_and_folder(tmp_path):
    path = NOTEBOOKS / "03_vae_elbo.ipynb"
    runs = runner.plan_sweep(path, {"beta": [0.25, 1], "widths": [[128, 64], [32]]}, tmp_path)
    assert [r.name for r in runs] == ["beta=0.25,widths=128_64", "beta=0.25,widths=32",
                                      "beta=1,widths=128_64", "beta=1,widths=32"]
    assert runs[2].parameters == {"beta": 1.0, "widths": [128, 64]}  # checked: 1 became 1.0
    with pytest.raises(ValueError, match="share the folder 'beta=1'"):
        runner.plan_sweep(path, {"beta": [1, 1.0]}, tmp_path)
    with pytest.raises(ValueError, match="results_dir cannot be swept"):
        runner.plan_sweep(path, {"results_dir": ["a", "b"]}, tmp_path)
    with pytest.raises(ValueError, match="03_vae_elbo: parameter widths=128 is not allowed"):
        runner.plan_sweep(path, {"widths": [128, 64]}, tmp_path)  # a list of lists is needed


def test_sweep_of_two_values_writes_runs_csv_and_plot(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep_cli(str(tiny), "-p", "samples", "2,3", "-p", "seed", "5",
                     "--out", str(out), "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "2 run(s): 2 executed, 0 skipped (completed earlier), 0 failed" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "results.csv", "results.png", "samples=2,seed=5", "samples=3,seed=5"]
    for folder in ("samples=2,seed=5", "samples=3,seed=5"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [
            "00_start_here.ipynb", "00_start_here.json"]
    rows = read_csv(out / "results.csv")
    assert list(rows[0])[:2] == ["samples", "seed"]  # parameter columns first
    assert [(r["samples"], r["seed"], r["square"], r["parts.offset"]) for r in rows] == [
        ("2", "5", "4", "7"), ("3", "5", "9", "8")]
    assert list(rows[0])[-1] == "wall_time_s" and float(rows[0]["wall_time_s"]) > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_reports_a_failing_run_and_keeps_the_others(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep_cli(str(tiny), "-p", "samples", "2,13", "--out", str(out), "--no-progress") == 1
    captured = capsys.readouterr()
    assert "1 executed, 0 skipped (completed earlier), 1 failed" in captured.out
    assert "1 of 2 run(s) of 00_start_here failed" in captured.err
    assert "samples=13: RuntimeError: unlucky samples" in captured.err
    failed = out / "samples=13"
    assert (failed / "00_start_here.FAILED.ipynb").is_file()
    assert not (failed / "00_start_here.ipynb").exists()
    assert [r["samples"] for r in read_csv(out / "results.csv")] == ["2"]


def test_an_interrupted_sweep_resumes_and_skips_complete_runs(tiny, tmp_path):
    import io

    out = tmp_path / "sweep"
    first = runner.sweep(tiny, {"samples": [2, 3]}, out, progress=False)
    assert [r.status for r in first.runs] == ["done", "done"]
    kept = out / "samples=2" / "00_start_here.ipynb"
    kept_mtime = kept.stat().st_mtime_ns
    # Interrupt samples=3 after it recorded its metrics, before its last cell: the results
    # file is there, the executed notebook only as papermill's partial copy.
    interrupted = out / "samples=3"
    (interrupted / "00_start_here.ipynb").rename(interrupted / ".00_start_here.running.ipynb")
    assert (interrupted / "00_start_here.json").is_file()
    printed = io.StringIO()
    second = runner.sweep(tiny, {"samples": [2, 3]}, out, progress=True, stream=printed)
    assert [r.status for r in second.runs] == ["skipped", "done"]
    assert "[1/2] samples=2\n    skipped: completed by an earlier sweep" in printed.getvalue()
    assert kept.stat().st_mtime_ns == kept_mtime
    assert (interrupted / "00_start_here.ipynb").is_file()
    assert not (interrupted / ".00_start_here.running.ipynb").exists()
    rows = read_csv(out / "results.csv")
    assert [r["samples"] for r in rows] == ["2", "3"]
    assert float(rows[0]["wall_time_s"]) > 0  # a skipped run's time, from its notebook
    assert second.plot == out / "results.png" and second.ok


@pytest.mark.parametrize(
    "values,message",
    [
        (["-p", "samples", "2,0"], "00_start_here: parameter samples=0 is not allowed: samples "
                                   "must be an integer from 1 to 200"),
        (["-p", "samples", "2,2.5"], "00_start_here: parameter samples=2.5 is not allowed"),
        (["-p", "samples", "2", "-p", "nope", "1"],
         "00_start_here: unknown parameter 'nope' for 00_start_here"),
        (["-p", "samples", "2", "-p", "samples", "3"], "parameter 'samples' is given twice"),
        (["-p", "samples", "[2,3"], "unbalanced brackets"),
    ],
)
def test_sweep_rejects_a_bad_value_before_any_run(tiny, tmp_path, capsys, values, message):
    out = tmp_path / "sweep"
    assert sweep_cli(str(tiny), *values, "--out", str(out)) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()  # nothing ran


def test_sweep_figure_draws_one_line_per_value_of_the_second_parameter():
    rows = [{"beta": b, "latent_dim": k, "loss": b * k, "name": "x", "wall_time_s": 1.0}
            for k in (2, 8) for b in (0.25, 1.0, 4.0)]
    figure = runner.sweep_figure("03_vae_elbo", ["beta", "latent_dim"], rows)
    (ax,) = [a for a in figure.axes if a.get_visible()]  # one numeric metric: loss
    assert ax.get_title() == "loss" and ax.get_xlabel() == "beta" and ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["latent_dim=2", "latent_dim=8"]
    assert list(ax.get_lines()[1].get_ydata()) == [2.0, 8.0, 32.0]
    assert runner.sweep_figure("03_vae_elbo", ["beta"], []) is None


# --------------------------------------------------------------------------- the README's picture


def png_output(width_in, height_in, color):
    """A ``display_data`` output holding a matplotlib PNG of 100 pixels per inch."""
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(figure)
    figure.add_subplot().plot([0, 1], [1, 0], color=color)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    data = {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}
    return nbformat.v4.new_output("display_data", data=data)


def panel_notebook(path, cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title")])
    for index, (tags, outputs) in enumerate(cells):
        cell = nbformat.v4.new_code_cell("plot()", metadata={"tags": tags}, outputs=outputs)
        cell["id"] = f"cell-{index + 1:02d}"
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def read_png(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path, format="png")


def test_panel_is_composed_from_the_tagged_cells_in_a_two_column_grid(tmp_path):
    a = panel_notebook(tmp_path / "01_a.ipynb", [
        ([], [png_output(5, 5, "red")]),                         # untagged: left out
        (["readme-panel"], [png_output(3, 2, "blue"), png_output(4, 4, "red")]),  # first image
    ])
    b = panel_notebook(tmp_path / "02_b.ipynb", [(["readme-panel"], [png_output(9, 3, "green")])])
    figures = runner.panel_figures([a, b])
    assert [stem for stem, _ in figures] == ["01_a", "02_b"]
    assert figures[0][1].shape == (200, 300, 3) and figures[1][1].shape == (300, 900, 3)

    out = runner.write_panel([a, b], out=tmp_path / "docs" / "series.png")
    image = read_png(out)[..., :3]
    m, title, column = runner.PANEL_MARGIN_PX, runner.PANEL_TITLE_PX, runner.PANEL_COLUMN_PX
    # two columns as wide as the widest panel after scaling (900 px -> 720 px, aspect kept:
    # 240 px high); one row as high as its highest panel
    assert image.shape[:2] == (2 * m + title + 240, 3 * m + 2 * column)
    # the narrow panel is drawn pixel for pixel, centred in its column under its title
    x = m + column // 2 - 150
    assert abs(image[m + title:m + title + 200, x:x + 300] - figures[0][1]).max() < 1 / 255 + 1e-6
    assert read_png(out).shape[-1] in (3, 4) and out.stat().st_size < 600_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["series.png"]  # no temporary left
    assert out.read_bytes() == runner.write_panel([a, b], out=tmp_path / "again.png").read_bytes()

    c = panel_notebook(tmp_path / "03_c.ipynb", [(["readme-panel"], [png_output(2, 2, "k")])])
    three = read_png(runner.write_panel([a, b, c], out=tmp_path / "three.png"))
    assert three.shape[:2] == (3 * m + 2 * title + 240 + 200, 3 * m + 2 * column)  # two rows


def test_a_tagged_cell_without_an_image_is_named(tmp_path):
    path = panel_notebook(tmp_path / "05_x.ipynb", [
        (["readme-panel"], [png_output(2, 2, "k")]),
        (["readme-panel"], [nbformat.v4.new_output("stream", text="no figure\n")]),
    ])
    with pytest.raises(ValueError, match="05_x.ipynb: cell 'cell-02' is tagged 'readme-panel' "
                                         "but has no image/png output"):
        runner.write_panel([path], out=tmp_path / "series.png")
    assert not (tmp_path / "series.png").exists()
    untagged = panel_notebook(tmp_path / "06_y.ipynb", [([], [png_output(2, 2, "k")])])
    with pytest.raises(ValueError, match="no cell is tagged 'readme-panel'"):
        runner.write_panel([untagged], out=tmp_path / "series.png")


def test_the_committed_readme_panel_is_up_to_date(tmp_path):
    """``docs/series.png`` is what ``python -m support panel`` makes of the committed notebooks
    (rerun it after changing a tagged figure); the README shows it under its title."""
    import numpy as np

    done = cli("panel", "--out", str(tmp_path / "series.png"))
    assert done.returncode == 0, done.stderr
    committed = ROOT / "docs" / "series.png"
    made, kept = read_png(tmp_path / "series.png"), read_png(committed)
    # Text rasterisation differs in the last bit between FreeType builds (99 pixels by 1/255
    # here); a stale figure changes thousands of pixels by far more.
    assert made.shape == kept.shape, "docs/series.png is stale: run `python -m support panel`"
    changed = (np.abs(made - kept).max(axis=-1) > 8 / 255).mean()
    assert changed < 1e-4, (
        f"docs/series.png is stale ({changed:.2%} of pixels differ): run `python -m support panel`")
    assert committed.stat().st_size < 600_000
    assert "](docs/series.png)" in (ROOT / "README.md").read_text().split("\n## ", 1)[0]


def test_run_order_starts_the_longest_chain_first():
    """Notebook 05 reads 03's and 04's results: it waits for both, and 04 (268 s, then 05's 262 s)
    outranks 06 (381 s alone), which outranks the rest."""
    names = [p.stem for p in runner.all_notebooks()]
    reads = {name: runner.reads_results_of(runner.resolve(name)) for name in names}
    assert reads["05_diffusion"] == {"03_vae_elbo", "04_gan_training"}
    assert not any(reads[name] for name in names if name != "05_diffusion")
    ranked, waits = runner.run_order(names, reads)
    assert [names[j] for j in ranked] == ["04_gan_training", "03_vae_elbo", "06_comparison", "05_diffusion",
                                          "02_mse_objective", "01_autoencoders", "00_start_here"]
    assert waits[names.index("05_diffusion")] == [names.index("03_vae_elbo"), names.index("04_gan_training")]
    # a notebook without an expected time counts 0; ties keep the order asked for; one that
    # reads a notebook outside the run waits for nothing
    ranked, waits = runner.run_order(["x", "y", "x"], {"y": {"z"}}, seconds={})
    assert ranked == [0, 1, 2] and waits == [[], [], []]


def test_run_with_two_jobs_starts_a_notebook_after_those_it_reads(tmp_path, monkeypatch):
    """With the execution replaced by a short wait, 05 starts only after 03 and 04 have ended,
    while 03 and 04 run at once; the outcomes keep the order asked for."""
    import io
    import threading
    import time

    log, lock = {}, threading.Lock()

    def fake_execute(path, output, parameters, progress=True, env=None):
        with lock:
            log[path.stem] = [time.perf_counter(), None]
        time.sleep(0.3)
        nbformat.write(nbformat.v4.new_notebook(), output)
        results = runner.Path(parameters["results_dir"]) / f"{path.stem}.json"
        results.write_text(json.dumps({"metrics": {"ran": 1}}))
        with lock:
            log[path.stem][1] = time.perf_counter()

    monkeypatch.setattr(runner, "execute", fake_execute)
    outcomes = runner.run(["05", "03", "04"], {}, out=tmp_path, stream=io.StringIO(), jobs=2)
    assert [o.notebook for o in outcomes] == ["05_diffusion", "03_vae_elbo", "04_gan_training"]
    assert all(o.ok and o.metrics == {"ran": 1} for o in outcomes)
    (start3, end3), (start4, end4) = log["03_vae_elbo"], log["04_gan_training"]
    start5 = log["05_diffusion"][0]
    assert start5 >= max(end3, end4)
    assert max(start3, start4) < min(end3, end4)  # 03 and 04 side by side
