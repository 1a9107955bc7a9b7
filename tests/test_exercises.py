"""Every exercise of a notebook has a hint and a worked solution, and every solution runs.

An exercise is a numbered item of the notebook's "Exercises" Markdown cell, followed by a
collapsed ``<details><summary>Hint</summary>`` and ``<details><summary>Solution</summary>``.
A solution's ``python`` blocks are code a learner pastes into a new cell at the end of the
notebook (nothing needs the command line, so it works on Colab). The test runs the notebook at
small parameters with each solution appended as such a cell, so a solution that no longer
matches the notebook's names or ``support``'s interface fails here.

Where a solution's prose says what its code shows at the notebook's defaults, the notebook runs
at its defaults instead, and a check from ``CLAIMS`` follows the solution's cell, in its
namespace: a claim that stops holding fails here.
"""

import re
import textwrap

import nbformat
import papermill
import pytest

from .conftest import NOTEBOOKS

# Small parameters: the solutions must run, not reproduce the defaults' figures (the notebooks of
# CLAIMS, below, run at their defaults instead).
QUICK = {
    "00_start_here": dict(samples=8, mixture_samples=500),
    "01_autoencoders": dict(train_size=300, latent_dims=[2, 8], linear_epochs=3, epochs=2),
    "02_mse_objective": dict(epochs=3, small_train_size=30, code_sizes=[2], depths=[1],
                             sweep_epochs=1, train_size=400),
    "05_diffusion": dict(toy_steps=100, seeds=[0, 1], timesteps=50, sampling_steps=[5, 10],
                         toy_batch_size=64, epochs=3),
    "06_comparison": dict(train_size=400, test_size=100, seeds=[0], epochs=3, made_epochs=2, gan_epochs=2,
                          wgan_epochs=1, diffusion_epochs=2, samples=100, nll_samples=10),
}

# What each solution's prose says its code shows at the notebook's defaults, as code run right
# after the solution's cell. A notebook listed here runs at its defaults (not at QUICK).
CLAIMS = {
    "03_vae_elbo": {
        # five times the training: both gaps shrink, the amortisation gap by the larger fraction, and the
        # training likelihood comes closer to PPCA's maximum (measured 0.785 -> 0.164 and 0.047 -> 0.032
        # nats; 14.30 against 14.36)
        1: """
amortisation5, approximation5 = np.mean(best5 - elbo5), np.mean(log_px5 - best5)
assert shrank, (amortisation5, approximation5)
assert amortisation5 / amortisation_gap.mean() < approximation5 / approximation_gap.mean()
assert ml_train_log_px - train5 < ml_train_log_px - train_log_px, (train5, train_log_px)
""",
        # a 2-d code survives without warm-up (measured 1.02 and 1.12 nats)
        2: "assert np.all(kl_small > 0.1), kl_small",
        # each larger free-bits threshold raises the smallest KL per dimension and the test -ELBO
        # (measured 0.045, 0.262, 0.854 nats; 24.02, 24.73, 28.13)
        3: """
smallest, costs = zip(*(free_bits_runs[lam] for lam in sorted(free_bits_runs)))
assert all(a < b for a, b in zip(smallest, smallest[1:])), smallest
assert all(a < b for a, b in zip(costs, costs[1:])), costs
""",
        # the closed form equals the numerical integral (measured to 3e-12)
        4: "assert abs(numerical - closed_form) < 1e-8, (numerical, closed_form)",
    },
    "04_gan_training": {
        # a copier sits far closer to the training images than to the test images (measured 1.116 +- 0.014)
        1: "assert copy_gap.mean() > 10 * metrics.standard_error(copy_gap), copy_gap.mean()",
        # half the classes: precision within 3 s.e. of the real images', recall about half, FID above
        # the floor (measured 0.978 and 0.483, FID 23.1 against 1.56)
        2: """
precision_se = np.hypot(*(metrics.binomial_se(r.precision, n_score) for r in (dropped_pr, real_pr)))
assert abs(dropped_pr.precision - real_pr.precision) < 3 * precision_se, (dropped_pr, real_pr)
assert 0.35 < dropped_pr.recall < 0.65, dropped_pr
assert dropped_fid > fid[floor_name]
""",
        # both FIDs fall from n = 90 to n_score (measured DCGAN 12.5 -> 6.7, floor 8.3 -> 1.6)
        3: """
(small_dcgan, small_floor), (large_dcgan, large_floor) = (fid_by_n[n] for n in sorted(fid_by_n))
assert len(fid_by_n) == 2 and small_dcgan > large_dcgan and small_floor > large_floor, fid_by_n
""",
        # lambda = 10 holds the critic's median gradient norm closer to 1 (measured 1.03 against 0.35)
        4: "assert abs(heavy_slope - 1) < abs(slope['WGAN-GP + cosine'] - 1), (heavy_slope, slope)",
        # the critic's estimate and the FID fall together on digits (measured correlation +0.996)
        6: "assert correlation > 0.9, track",
    },
}

# The solutions of a CLAIMS notebook that claim nothing must run, not reproduce a figure: in the run at
# the defaults each gets a short budget by these replacements in its code (each must be found).
SHORTENED = {
    "04_gan_training": {
        5: [("steps=fit.step", "steps=2 * steps_per_epoch")],
        7: [("control_runs, control_seconds = train_toys(controls)",
             "run.params['toy_steps'], snapshot_every = 200, 50  # the test's short budget\n"
             "control_runs, control_seconds = train_toys(controls)")],
    },
}

SOLUTION = re.compile(r"<summary>\s*Solution\s*</summary>(.*?)</details>", re.S)
HINT = re.compile(r"<summary>\s*Hint\s*</summary>(.*?)</details>", re.S)
CODE = re.compile(r"^[ \t]*```python\n(.*?)^[ \t]*```", re.S | re.M)


def exercises_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert len(cells) == 1, f"{name}: expected one Markdown cell with '## Exercises'"
    return cells[0].source.split("## Exercises", 1)[1]


def solutions(name):
    return [[textwrap.dedent(code) for code in CODE.findall(block)]
            for block in SOLUTION.findall(exercises_cell(name))]


@pytest.mark.parametrize("name", sorted(set(QUICK) | set(CLAIMS)))
def test_every_exercise_has_a_hint_and_a_solution_with_code(name):
    text = exercises_cell(name)
    numbered = re.findall(r"^\d+\. ", text, re.M)
    assert len(numbered) >= 3, f"{name}: {len(numbered)} exercises"
    assert len(HINT.findall(text)) == len(numbered), f"{name}: an exercise has no hint"
    found = solutions(name)
    assert len(found) == len(numbered), f"{name}: an exercise has no solution"
    assert all(found), f"{name}: a solution has no python block"


def run_with_solutions(name, tmp_path, parameters, claims, own_results=False, shortened=None):
    """Execute ``name`` with each solution appended as a cell (and each claim's check after its
    solution); return the executed notebook. Its results go to a folder in ``tmp_path``, or with
    ``own_results`` to the notebook's default ``results_dir`` (as nbval's run of it).
    ``shortened``: number -> [(old, new)] replacements in that solution's code."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for number, blocks in enumerate(solutions(name), start=1):
        source = f"# solution of exercise {number}\n" + "\n".join(blocks)
        for old, new in (shortened or {}).get(number, []):
            assert old in source, f"{name}, solution {number}: {old!r} not found"
            assert number not in claims, f"{name}, solution {number}: a claimed solution runs at full budget"
            source = source.replace(old, new)
        nb.cells.append(nbformat.v4.new_code_cell(source))
        if number in claims:
            check = f"# what solution {number} claims\n" + claims[number].strip()
            nb.cells.append(nbformat.v4.new_code_cell(check))
    source = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, source)
    results = {} if own_results else {"results_dir": str(tmp_path / "results")}
    return papermill.execute_notebook(
        str(source), str(tmp_path / "out.ipynb"), parameters={**parameters, **results},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
    )


def stream_text(cell):
    streams = [output for output in cell.get("outputs", []) if output.output_type == "stream"]
    return "".join(output.get("text", "") for output in streams)


def test_every_claim_names_an_exercise_that_exists():
    for name, claims in CLAIMS.items():
        assert set(claims) <= set(range(1, len(solutions(name)) + 1)), name


def test_every_shortened_solution_claims_nothing_and_has_the_text_replaced():
    for name, shortened in SHORTENED.items():
        assert name in CLAIMS and not set(shortened) & set(CLAIMS[name]), name
        found = solutions(name)
        for number, replacements in shortened.items():
            for old, _ in replacements:
                assert old in "\n".join(found[number - 1]), (name, number, old)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_solution_runs_at_the_end_of_the_notebook(name, tmp_path):
    run_with_solutions(name, tmp_path, QUICK[name], {})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_every_solution_shows_what_it_claims_at_the_defaults(name, tmp_path):
    # This run replaces nbval's execution of the notebook (tests/conftest.py): at the defaults, its
    # results written where nbval's run writes them (the notebook's own results_dir, which the gate
    # test reads), and the cells nbval would compare compared here.
    executed = run_with_solutions(name, tmp_path, {}, CLAIMS[name], own_results=True,
                                  shortened=SHORTENED.get(name))
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    ran = {cell.source: cell for cell in executed.cells if cell.cell_type == "code"}
    for cell in committed.cells:
        if cell.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in cell.source:
            assert stream_text(ran[cell.source]) == stream_text(cell), cell.source
