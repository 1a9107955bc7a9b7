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

# Each pytest-xdist worker runs TensorFlow, in its own process and in the notebook kernels it starts:
# the CPUs are shared among the workers (support.runner.thread_environment; the runner does the same
# for notebooks run at once), not given to every one of them in full.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from support.runner import thread_environment

    os.environ.update(thread_environment(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

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


# The fast lane, `pytest -m "not slow"`, leaves out what is marked slow here, in one place:
# notebook executions (nbval, papermill reruns, the exercises' solutions, the CLI runs, the
# browser), the two-process distribution test, and unit tests that train for seconds (measured
# on 2 cores: each over about 3 s, or a shared fixture that trains a model).
SLOW_MODULES = {"test_notebooks.py", "test_exercises.py", "test_browser.py", "test_distribute.py"}
SLOW_FIXTURES = {"scorer", "trained", "gan_runs", "distributed"}  # each trains before its tests
SLOW_TESTS = {
    "test_runner.py": {"test_two_notebooks_run_at_once_and_report_in_order",
                       "test_a_kernel_started_with_an_environment_sees_it",
                       "test_cli_run_prints_the_results_table",
                       "test_a_failing_notebook_is_named_and_its_output_marked",
                       "test_an_interrupted_sweep_resumes_and_skips_complete_runs",
                       "test_sweep_of_two_values_writes_runs_csv_and_plot",
                       "test_sweep_reports_a_failing_run_and_keeps_the_others"},
    "test_classifier.py": {"test_training_without_test_set_and_the_seed"},
    "test_gan.py": {"test_precision_recall_blocks_match_the_definition_and_stay_small",
                    "test_keras_round_trip_restores_generator_and_compile"},
    "test_checkpoints.py": {"test_a_run_on_epoch_boundaries_has_no_batch_hook_and_trains_the_same_steps",
                            "test_train_vae_with_checkpoint_dir_resumes_to_the_uninterrupted_result"},
    "test_toy_gans.py": {"test_set_ups_trained_together_train_as_they_do_alone"},
    "test_diffusion.py": {"test_fit_resumable_resumes_an_interrupted_training_to_the_same_weights"},
    "test_autoregressive.py": {"test_trained_on_digits_it_beats_independent_pixels_and_round_trips"},
    # two fresh TensorFlow imports
    "test_training.py": {"test_the_dcgan_fit_without_remapping_prints_no_remapper_error"},
    "test_notebook.py": {"test_importing_support_changes_nothing_in_the_process",  # fresh TF imports
                         "test_tensorflows_own_log_lines_still_reach_a_program_that_imports_support"},
    "test_hygiene.py": {"test_each_module_of_support_imports_alone"},  # a fresh interpreter each
    "test_multi_worker.py": {"test_two_worker_processes_train_the_vae_like_one_process"},
    "test_tensorboard_logs.py": {"test_logging_does_not_change_the_training",
                                 "test_every_training_function_logs_its_own_numbered_run"},
}


def _is_slow(item) -> bool:
    module = Path(str(item.fspath)).name
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    return (Path(str(item.fspath)).parent == NOTEBOOKS or module in SLOW_MODULES
            or bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
            or name in SLOW_TESTS.get(module, ()))


# The quality-gate tests that read a notebook's run at its defaults (see default_run_metrics).
GATE_TESTS = {
    "test_autoencoders_quality_gates_at_defaults": "01_autoencoders",
    "test_mse_objective_quality_gates_at_defaults": "02_mse_objective",
    "test_vae_quality_gates_at_defaults": "03_vae_elbo",
    "test_gan_quality_gates_at_defaults": "04_gan_training",
    "test_diffusion_quality_gates_at_defaults": "05_diffusion",
    "test_comparison_leaderboard_at_defaults": "06_comparison",
}


# Runs a notebook at its defaults with its solutions appended (tests/test_exercises.py).
CLAIMS_TEST = "test_every_solution_shows_what_it_claims_at_the_defaults"

# The longest work units, in seconds of one worker as CI measured them (2 cores, two workers): a
# notebook's group (its run at the defaults and its gate test) by the notebook's name, a single test by
# its name. pytest-xdist hands out the units in the order collected (``--no-loadscope-reorder``), so
# they are put first, longest first, and the many short tests fill the end: a worker that finishes
# early does not wait idle while the other runs one long test to the end.
EXPECTED_SECONDS = {
    "06_comparison": 850,
    "04_gan_training": 730,
    "test_gan_on_mnist": 500,
    "05_diffusion": 420,
    "03_vae_elbo": 400,
    "test_diffusion_on_mnist_short_budget": 320,
    "test_comparison_on_mnist_short_budget": 280,
    "test_vae_on_mnist_short_budget": 250,
    "test_gan_rerun_as_a_wgan_gp_with_checkpoint_dir_resumes_and_records_the_critics_estimate": 230,
    "02_mse_objective": 200,
    "test_autoencoders_on_mnist": 190,
    "test_diffusion_rerun_resumes_from_checkpoints": 185,
    "test_notebook_runs_all_cells_in_jupyterlab_in_a_real_browser": 185,
    "01_autoencoders": 170,
    "test_same_seed_with_op_determinism_records_identical_metrics": 165,
    "test_mnist_classifier_on_10k_images": 160,
    "test_vae_rerun_with_checkpoint_dir_resumes_and_logs_to_tensorboard": 110,
    "test_every_solution_runs_at_the_end_of_the_notebook": 90,
    "test_gan_rerun_with_the_hinge_loss_and_spectral_norm": 90,
    "test_mse_objective_other_parameters": 90,
    "test_keras_round_trip_restores_identical_outputs": 85,
    "test_the_strategy_parameter_builds_and_trains_every_keras_model_under_it": 65,
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(session, config, items):
    """Mark notebook executions ``slow``, and run the notebooks under nbval first, so that the
    quality-gate tests can read the metrics those executions recorded instead of running each
    notebook at its defaults a second time (see :func:`default_run_metrics`).

    A notebook whose solutions are checked at its defaults (``CLAIMS`` of
    tests/test_exercises.py) is executed by that test instead of nbval: the notebook at its
    defaults with the solutions appended does all that nbval's run does (every cell runs, the
    ``NBVAL_CHECK_OUTPUT`` cells are compared, the results are written where the gate test reads
    them), so nbval's cells of that notebook are deselected when the test is collected.

    With pytest-xdist (``-n 2 --dist loadgroup``, the project's default), a notebook's nbval
    cells (or its solutions test) and its gate test form one ``xdist_group``: one worker runs
    them, in this order. The longest units go first (:data:`EXPECTED_SECONDS`)."""
    notebooks = [item for item in items if Path(str(item.fspath)).parent == NOTEBOOKS]
    others = [item for item in items if Path(str(item.fspath)).parent != NOTEBOOKS]
    # A notebook whose solutions are checked at its defaults (tests/test_exercises.py) is executed
    # there, at its defaults, with its results where nbval's run writes them and its
    # NBVAL_CHECK_OUTPUT cells compared: that run stands in for nbval's, which is deselected.
    claims = {item.callspec.params["name"]: item for item in others
              if getattr(item, "originalname", None) == CLAIMS_TEST}
    replaced = [item for item in notebooks if Path(str(item.fspath)).stem in claims]
    if replaced:
        config.hook.pytest_deselected(items=replaced)
        notebooks = [item for item in notebooks if item not in replaced]
        first = [claims[name] for name in sorted(claims)]
        others = first + [item for item in others if item not in first]
    for item in notebooks + others:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
        if Path(str(item.fspath)).parent == NOTEBOOKS:
            item.add_marker(pytest.mark.xdist_group(Path(str(item.fspath)).stem))
        elif getattr(item, "originalname", None) in GATE_TESTS:
            item.add_marker(pytest.mark.xdist_group(GATE_TESTS[item.originalname]))
        elif getattr(item, "originalname", None) == CLAIMS_TEST:
            item.add_marker(pytest.mark.xdist_group(item.callspec.params["name"]))
    items[:] = _longest_first(notebooks + others)
    _suffix_groups(config, items)


def _longest_first(items):
    """``items`` with the work units of :data:`EXPECTED_SECONDS` first, longest first; a unit is a
    notebook's ``xdist_group`` or a single test. The order within a unit, and among the rest, is kept."""
    units: dict[str, list] = {}
    for item in items:
        groups = [str(mark.args[0]) for mark in item.iter_markers("xdist_group") if mark.args]
        units.setdefault(groups[0] if groups else item.nodeid, []).append(item)

    def seconds(key):
        first = units[key][0]
        name = getattr(first, "originalname", None) or first.name.split("[")[0]
        return EXPECTED_SECONDS.get(key, EXPECTED_SECONDS.get(name, 0))

    return [item for key in sorted(units, key=lambda key: -seconds(key)) for item in units[key]]


def _suffix_groups(config, items):
    """pytest-xdist's ``loadgroup`` groups tests by a ``@group`` suffix that its worker hook
    appends to ``item._nodeid``; pytest 9 reads the nodeid from ``item._id`` instead, so the
    suffix is lost and a notebook's cells would be split between workers. Append it here."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group") if mark.args})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


def default_run_metrics(name: str, tmp_path: Path, execute) -> dict:
    """The metrics of ``name`` executed at its default parameters in this test session.

    nbval executes every notebook at its defaults from ``notebooks/`` (the solutions test of
    tests/test_exercises.py does, for the notebooks it checks at their defaults), and the summary cell
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
