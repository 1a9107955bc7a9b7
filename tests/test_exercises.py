"""Every exercise of a notebook has a hint and a worked solution, and every solution runs.

An exercise is a numbered item of the notebook's "Exercises" Markdown cell, followed by a
collapsed ``<details><summary>Hint</summary>`` and ``<details><summary>Solution</summary>``.
A solution's ``python`` blocks are code a learner pastes into a new cell at the end of the
notebook (nothing needs the command line, so it works on Colab). The test runs the notebook at
small parameters with each solution appended as such a cell, so a solution that no longer
matches the notebook's names or ``support``'s interface fails here.
"""

import re
import textwrap

import nbformat
import papermill
import pytest

from .conftest import NOTEBOOKS

# Small parameters: the solutions must run, not reproduce the defaults' figures.
QUICK = {
    "00_start_here": dict(samples=8, mixture_samples=500),
    "01_autoencoders": dict(train_size=300, latent_dims=[2, 8], linear_epochs=3, epochs=2),
    "02_mse_objective": dict(epochs=3, small_train_size=30, code_sizes=[2], depths=[1],
                             sweep_epochs=1, train_size=400),
    "03_vae_elbo": dict(train_size=320, test_size=64, epochs=2, kl_warmup_epochs=1, sweep_epochs=2,
                        linear_epochs=2, nll_samples=10, betas=[1.0], seeds=1, iwae_samples=[1, 2],
                        snr_samples=[1, 2]),
    "04_gan_training": dict(train_size=400, epochs=2, toy_steps=100, seeds=[0, 1]),
    "05_diffusion": dict(toy_steps=100, seeds=[0, 1], timesteps=50, sampling_steps=[5, 10],
                         toy_batch_size=64, epochs=3),
    "06_comparison": dict(train_size=400, test_size=100, seeds=[0], epochs=3, made_epochs=2, gan_epochs=2,
                          wgan_epochs=1, diffusion_epochs=2, samples=100, nll_samples=10),
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


@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_exercise_has_a_hint_and_a_solution_with_code(name):
    text = exercises_cell(name)
    numbered = re.findall(r"^\d+\. ", text, re.M)
    assert len(numbered) >= 3, f"{name}: {len(numbered)} exercises"
    assert len(HINT.findall(text)) == len(numbered), f"{name}: an exercise has no hint"
    found = solutions(name)
    assert len(found) == len(numbered), f"{name}: an exercise has no solution"
    assert all(found), f"{name}: a solution has no python block"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_solution_runs_at_the_end_of_the_notebook(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for number, blocks in enumerate(solutions(name), start=1):
        source = f"# solution of exercise {number}\n" + "\n".join(blocks)
        nb.cells.append(nbformat.v4.new_code_cell(source))
    source = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, source)
    papermill.execute_notebook(
        str(source), str(tmp_path / "out.ipynb"),
        parameters={**QUICK[name], "results_dir": str(tmp_path / "results")},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
    )
