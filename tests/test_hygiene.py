"""Project hygiene: lint, short functions, imports that point one way, and every model of
`support` round-trips through `.keras`."""

import ast
import subprocess
import sys

import keras
import numpy as np
import pytest

from support import training
from support.models import classifier, gan
from support.models.autoencoders import ConvAutoencoder, DenseAutoencoder
from support.models.autoregressive import MADE
from support.models.vae import VAE

from .conftest import EXPECTED_SECONDS, GATE_TESTS, ROOT


def test_ruff_is_clean_on_the_package_the_tests_and_the_notebooks():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "support", "tests", "notebooks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


PACKAGE = ROOT / "support"
MAX_FUNCTION_LINES = 60  # of code: the docstring is not counted


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def _code_lines(function) -> int:
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
            first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_in_support_is_longer_than_sixty_lines_of_code():
    long = [f"{module}.{node.name}: {_code_lines(node)} lines"
            for module, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _code_lines(node) > MAX_FUNCTION_LINES]
    assert not long, "split these into named parts:\n" + "\n".join(long)


def _imports(module: str, tree: ast.Module, known) -> set[str]:
    """The modules of `support` that ``module`` imports, at its top or inside a function."""
    package = module if (PACKAGE / module.replace("support.", "", 1).replace(".", "/")).is_dir() \
        else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def test_imports_inside_support_point_one_way_and_form_no_cycle():
    modules = _modules()
    graph = {module: _imports(module, tree, modules) for module, tree in modules.items()}
    # models and objectives never reach back into training (the cycle this layout removed)
    for module, targets in graph.items():
        if module.startswith(("support.models", "support.objectives", "support.data")):
            assert not {t for t in targets if t.startswith("support.training")}, (module, targets)
    # no cycle among submodules (a package's __init__ importing its own parts is not one)
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in graph[module]:
            if target.startswith(module + "."):
                continue
            if state.get(target) == "open" and not module.startswith(target + "."):
                raise AssertionError("import cycle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_each_module_of_support_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _trained_a_little(model, x):
    """One short training, so that optimizer slots and batch-norm statistics are non-trivial."""
    model.compile(optimizer="adam") if not isinstance(model, gan.GAN) else model.compile()
    training.fit_resumable(model, x, steps=2, batch_size=16, steps_per_epoch=2)
    return model


MODELS = {
    "dense AE": lambda: DenseAutoencoder((8, 8, 1), (16,), 3),
    "linear AE": lambda: DenseAutoencoder((8, 8, 1), latent_dim=3, linear=True),
    "conv AE": lambda: ConvAutoencoder((8, 8, 1), (4, 8), 3),
    "dense VAE": lambda: VAE((8, 8, 1), 3, widths=(16,)),
    "conv VAE": lambda: VAE((8, 8, 1), 3, encoder="conv", filters=(4, 8)),
    "Gaussian VAE, learned sigma": lambda: VAE((8, 8, 1), 3, widths=(16,), likelihood="gaussian",
                                               learn_sigma=True),
    "MLP GAN, packed": lambda: gan.GAN(gan.mlp_generator(2, 64), gan.mlp_discriminator(64, pack=2),
                                       pack=2),
    "DCGAN": lambda: gan.GAN(gan.dcgan_generator(4, (8, 8, 1), 4), gan.dcgan_discriminator((8, 8, 1), 4)),
    "classifier": lambda: classifier.build_classifier((8, 8, 1), filters=4, feature_dim=8),
    "MADE": lambda: MADE((8, 8, 1), widths=(16,)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_survives_keras_save_and_load(tmp_path, name):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    model = MODELS[name]()
    if name == "classifier":
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, np.arange(32) % 10, epochs=1, verbose=0)
        inputs = x
    else:
        _trained_a_little(model, x.reshape(32, -1)[:, :64] if "MLP" in name else x)
        inputs = np.random.default_rng(1).normal(size=(5, model.latent_dim)).astype("float32") \
            if isinstance(model, gan.GAN) else x[:5]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(inputs, training=False)),
                                  np.asarray(model(inputs, training=False)))


def test_every_gate_test_is_grouped_with_the_notebook_it_reads():
    """A test that reads a notebook's run at its defaults (default_run_metrics) must run in the
    same pytest-xdist worker as that notebook's nbval cells, after them: conftest's GATE_TESTS."""
    found = {}
    for test_file in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(test_file.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "default_run_metrics":
                        found[node.name] = call.args[0].value
    assert found == GATE_TESTS


def test_every_expected_duration_names_a_notebook_or_a_test():
    # tests/conftest.py orders the work units by these; a misspelt name would silently order nothing
    sources = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    for name in EXPECTED_SECONDS:
        assert (ROOT / "notebooks" / f"{name}.ipynb").is_file() or f"def {name}(" in sources, name
