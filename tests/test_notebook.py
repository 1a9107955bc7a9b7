import json
import os
import re
import subprocess
import sys
import types

import nbformat
import numpy as np
import pytest

from support import notebook
from support.notebook import Param

from .conftest import NOTEBOOKS, ROOT

# --------------------------------------------------------------------------- parameters

EPOCHS = Param("epochs", int, 5, "passes over the training set", low=1, high=1000)
RATE = Param("learning_rate", float, 1e-3, "step size", low=1e-6, high=1.0)
NAME = Param("dataset", str, "digits", "the data set", choices=("digits", "mnist"))
DIRECTORY = Param("results_dir", str, "results", "output folder", kind="dir")
SIZES = Param("latent_dims", list, [2, 8], "code sizes", low=1, high=64)
BETAS = Param("betas", list, [0.5, 1.0], "KL weights", low=0.0, high=100.0, item=float)


@pytest.mark.parametrize(
    "param,value,expected",
    [
        (EPOCHS, 3, 3),
        (EPOCHS, np.int64(7), 7),
        (RATE, 1, 1.0),
        (RATE, 0.5, 0.5),
        (NAME, "mnist", "mnist"),
        (SIZES, (2, 16), [2, 16]),
        (SIZES, "[2, 16]", [2, 16]),
        (BETAS, "[0.25, 1, 4]", [0.25, 1.0, 4.0]),
        (DIRECTORY, "out/here", "out/here"),
    ],
)
def test_good_values_pass(param, value, expected):
    checked = param.check(value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize(
    "param,value,allowed",
    [
        (EPOCHS, 2.5, "an integer from 1 to 1000"),
        (EPOCHS, "eight", "an integer from 1 to 1000"),
        (EPOCHS, True, "an integer from 1 to 1000"),
        (EPOCHS, 0, "an integer from 1 to 1000"),
        (RATE, float("nan"), "a number from 1e-06 to 1.0"),
        (RATE, 2.0, "a number from 1e-06 to 1.0"),
        (NAME, "cifar", "one of 'digits', 'mnist'"),
        (SIZES, [2, 0], "a list of integers from 1 to 64"),
        (SIZES, [], "a list of integers from 1 to 64"),
        (SIZES, "[2, eight]", "a list of integers from 1 to 64"),
        (SIZES, "2, 8", "a list of integers from 1 to 64"),
        (SIZES, [2.0, 8], "a list of integers from 1 to 64"),
        (BETAS, [1.0, -1.0], "a list of numbers from 0.0 to 100.0"),
        (DIRECTORY, "", "a non-empty folder path"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_allowed(param, value, allowed):
    with pytest.raises(ValueError) as info:
        param.check(value)
    message = str(info.value)
    assert message.startswith(f"parameter {param.name}={value!r}")
    assert allowed in message


def test_results_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ValueError, match="it is a file"):
        DIRECTORY.check(str(target))


@pytest.mark.parametrize("where,says", [
    ("/dev/null/x", "/dev/null is not a folder"),
    ("FILE/below", "is not a folder"),
])
def test_results_dir_that_cannot_be_created_is_refused_before_any_work(tmp_path, where, says):
    where = where.replace("FILE", str(tmp_path / "file.txt"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="choose a folder you can write to") as info:
        DIRECTORY.check(where)
    assert says in str(info.value) and str(info.value).startswith(f"parameter results_dir={where!r}")


def test_results_dir_check_creates_nothing(tmp_path):
    target = tmp_path / "new" / "deeper"
    assert DIRECTORY.check(str(target)) == str(target)
    assert list(tmp_path.iterdir()) == []  # the folders it made to try are gone again


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_results_dir_in_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            DIRECTORY.check(str(locked / "results"))
    finally:
        locked.chmod(0o700)


def test_markdown_tables_escape_bars_and_keep_their_columns():
    table = notebook.markdown_table([("largest |gap − KL| / KL", 0.5), ("two\nlines", "a|b")],
                                    header=("|difference|", "value"))
    lines = table.splitlines()
    assert lines[0] == "| \\|difference\\| | value |"
    assert all(line.replace("\\|", "").count("|") == 3 for line in lines)
    assert "two lines" in lines[3]
    with pytest.raises(ValueError, match="3 cells and the header 2"):
        notebook.markdown_table([(1, 2, 3)], header=("a", "b"))


def test_validate_fills_defaults_and_rejects_unknown_names():
    values = notebook.validate("00_start_here", {"dataset": "mnist"})
    assert values == {"dataset": "mnist", "samples": 32, "mixture_samples": 2500, "seed": 0,
                      "deterministic": False, "results_dir": "results"}
    with pytest.raises(ValueError, match="unknown parameter 'epochs' for 00_start_here"):
        notebook.validate("00_start_here", {"epochs": 3})


def test_start_validates_seeds_and_detects_injected_unknown_names(tmp_path):
    namespace = {p.name: p.default for p in notebook.schema("00_start_here")}
    run = notebook.start("00_start_here", namespace)
    assert run.dataset == "digits" and run.params["samples"] == 32
    first = np.random.rand()
    notebook.start("00_start_here", namespace)
    assert np.random.rand() == first  # seeded again from `seed`
    namespace["In"] = ["", "# Parameters\ndataset = \"mnist\"\nlatent_dim = 4\n"]
    with pytest.raises(ValueError, match="unknown parameter 'latent_dim'"):
        notebook.start("00_start_here", namespace)
    namespace["In"] = []
    namespace["samples"] = 0
    with pytest.raises(ValueError, match="parameter samples=0"):
        notebook.start("00_start_here", namespace)


def test_each_notebook_declares_its_schema_with_comments():
    import papermill

    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        found = papermill.inspect_notebook(str(path))
        declared = {p.name: p for p in notebook.schema(path.stem)}
        assert list(found) == list(declared), path.name
        for name, info in found.items():
            param = declared[name]
            assert info["inferred_type_name"] == param.type.__name__, name
            assert eval(info["default"]) == param.default, name  # literal defaults only
            assert info["help"], f"{path.name}: parameter {name} has no comment"


# --------------------------------------------------------------------------- seeds, record


def test_set_seed_repeats_numpy_and_tensorflow():
    import tensorflow as tf

    notebook.set_seed(7)
    a = (np.random.rand(3), tf.random.uniform([3]).numpy())
    notebook.set_seed(7)
    b = (np.random.rand(3), tf.random.uniform([3]).numpy())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_record_writes_json_with_parameters_and_accumulates(tmp_path):
    run = notebook.Run("00_start_here", {"seed": 1, "results_dir": str(tmp_path / "r")})
    run.record(show=False, test_mse=np.float32(0.25), sizes=np.array([2, 8]))
    run.record(show=False, nested={"k2": 1.5})
    document = json.loads((tmp_path / "r" / "00_start_here.json").read_text())
    assert document["parameters"] == {"seed": 1, "results_dir": str(tmp_path / "r")}
    assert document["metrics"] == {"test_mse": 0.25, "sizes": [2, 8], "nested": {"k2": 1.5}}
    assert "python" in document["versions"]
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["00_start_here.json"]
    with pytest.raises(ValueError, match="metric loss is nan"):
        run.record(show=False, loss=float("nan"))
    with pytest.raises(ValueError, match="metric model has type object"):
        run.record(show=False, model=object())


def test_text_table_and_flatten():
    assert notebook.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1], "f": [{"g": 3}]}) == {
        "a.b": 1, "a.c.d": 2, "e": [1], "f.0.g": 3}
    table = notebook.text_table([("x", 0.123456), ("longer", 3)], ("name", "value"))
    assert table.splitlines() == ["name    value", "------  ------", "x       0.1235",
                                  "longer  3"]


# --------------------------------------------------------------------------- Colab


def _setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


@pytest.mark.parametrize("on_colab", [True, False])
def test_setup_cell_installs_only_on_colab(monkeypatch, on_colab):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # `support` not installed
    repository = notebook.repository_url()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        exec(_setup_cell(path), {})
    if on_colab:
        assert calls, "nothing installed on Colab"
        for cmd in calls:
            assert cmd[1:4] == ["-m", "pip", "install"] and cmd[-1] == f"git+{repository}"
            assert not any("tensorflow" in part for part in cmd)  # Colab keeps its own TF
    else:
        assert calls == []


def test_setup_cell_skips_when_already_installed(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(_setup_cell(NOTEBOOKS / "00_start_here.ipynb"), {})  # `support` is importable here
    assert calls == []


def test_every_badge_points_at_its_own_notebook():
    repository = notebook.repository_url()
    assert repository.startswith("https://github.com/")
    slug = repository.removeprefix("https://github.com/")
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert paths
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown").source
        expected = (f"https://colab.research.google.com/github/{slug}/blob/main/"
                    f"notebooks/{path.name}")
        assert f"]({expected})" in first, path.name
        assert _setup_cell(path) == notebook.colab_setup_source(repository)
    readme = (ROOT / "README.md").read_text()
    for path in paths:
        assert f"/blob/main/notebooks/{path.name})" in readme, f"README lacks {path.name}'s badge"


def test_optional_folder_parameter(tmp_path):
    param = notebook.Param("checkpoint_dir", str, "", "checkpoints", kind="optional_dir")
    assert param.check("") == ""
    assert param.check(str(tmp_path / "new")) == str(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    for bad in (" ", str(tmp_path / "file"), 3):
        with pytest.raises(ValueError, match="parameter checkpoint_dir="):
            param.check(bad)


# --------------------------------------------------------------------------- no side effects on import


def _python(code: str, extra_path=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with TensorFlow's own logging defaults (the test
    session's TF_CPP_MIN_LOG_LEVEL is not passed on)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SUPPORT_TF_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (extra_path, ROOT) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_importing_support_changes_nothing_in_the_process():
    done = _python(
        "import logging, os, sys\n"
        "finders = list(sys.meta_path)\n"
        "import support, support.notebook, support.data\n"
        "assert 'tensorflow' not in sys.modules, 'support imported TensorFlow'\n"
        "assert sys.meta_path == finders, sys.meta_path\n"
        "import support.models, support.training\n"
        "assert not [f for f in sys.meta_path if type(f).__module__.startswith('support')]\n"
        "assert 'TF_CPP_MIN_LOG_LEVEL' not in os.environ\n"
        "import tensorflow as tf\n"
        "assert not tf.get_logger().filters, tf.get_logger().filters\n"
        "from support import tensorboard_logs\n"
        "assert tensorboard_logs.active() is None\n"
        "print('clean')\n")
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]


FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
            b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n"
            b"E0000 loader.cc:1] {message}\\n")
if {fail}:
    raise ImportError("fake TensorFlow failed to load")


class config:
    @staticmethod
    def list_physical_devices():
        return []
"""


@pytest.mark.parametrize("fail", [False, True], ids=["loads", "fails"])
def test_the_notebooks_tensorflow_import_drops_only_the_start_up_lines(tmp_path, fail):
    """``notebook.import_tensorflow`` drops the known start-up lines, keeps any other line
    written while TensorFlow loads, and writes everything back when the import fails."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_TENSORFLOW.format(message="a real problem", fail=fail))
    done = _python("from support import notebook\nnotebook.import_tensorflow()\nprint('imported')\n",
                   extra_path=tmp_path)
    assert "a real problem" in done.stderr
    if fail:
        assert done.returncode != 0 and "ImportError: fake TensorFlow failed to load" in done.stderr
        assert "Could not find cuda drivers" in done.stderr  # nothing hidden when it fails
    else:
        assert done.returncode == 0 and "imported" in done.stdout, done.stderr
        assert "Could not find cuda drivers" not in done.stderr and "absl" not in done.stderr


def test_tensorflows_own_log_lines_still_reach_a_program_that_imports_support():
    """Outside the notebook runtime TensorFlow's C++ log lines are untouched: ``support`` used
    to send descriptor 2 to /dev/null while TensorFlow loaded and set TF_CPP_MIN_LOG_LEVEL=3 for
    the whole process, which also dropped real C++ errors in a user's program."""
    done = _python(
        "import os\n"
        "import support.models\n"
        "import tensorflow as tf\n"
        "tf.config.list_physical_devices()\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL', 'unset'))\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "unset"
    # the CPU wheel logs at least its CPU-features line (I...) at start-up, as it does without support
    assert re.search(r"^[IWEF]\d{4} ", done.stderr, re.M), done.stderr


def test_recorded_reads_a_runs_results_first_then_the_committed_notebook(tmp_path):
    from support import notebook

    results = tmp_path / "results"
    results.mkdir()
    (results / "04_gan_training.json").write_text(
        json.dumps({"parameters": {}, "metrics": {"toy": {"plain": {"modes": [3, 4]}}}}))
    flat, source = notebook.recorded("04_gan_training", results)
    assert flat == {"toy.plain.modes": [3, 4]} and "this run's" in source
    # no results file: the committed notebook's collapsed record table, parsed back
    flat, source = notebook.recorded("04_gan_training", tmp_path / "elsewhere")
    assert "committed" in source
    assert len(flat["toy.plain.modes"]) == 5 and all(isinstance(m, int) for m in flat["toy.plain.modes"])
    assert 0 < flat["toy.cosine.high_quality_mean"] <= 1
    with pytest.raises(ValueError, match="no results of 99_missing"):
        notebook.recorded("99_missing", tmp_path)
