"""The notebooks as users run them: papermill reruns with other parameters, bad parameters,
``--help-notebook``, and the committed copies as a learner opens them."""

import json
import os
import subprocess
import sys
import time

import nbformat
import numpy as np
import papermill
import pytest

from support import metrics as support_metrics

from .conftest import NOTEBOOKS, default_run_metrics


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


# Every notebook under papermill with each kind of bad parameter: (notebook, name, value, what
# the message must say besides naming the parameter). "FILE" stands for a path to an existing file.
BAD_PARAMETERS = {
    "wrong type": [
        ("00_start_here", "samples", "many", "an integer from 1 to 200"),
        ("01_autoencoders", "epochs", 2.5, "an integer from 1 to 5000"),
        ("02_mse_objective", "latent_dim", "eight", "an integer from 1 to 256"),
        ("03_vae_elbo", "beta", "high", "a number from 0.0 to 100.0"),
        ("04_gan_training", "deterministic", "yes", "true or false"),
        ("06_comparison", "gan_epochs", "[10]", "an integer from 1 to 5000"),
        ("05_diffusion", "toy_steps", 2.5, "an integer from 10 to 1000000"),
    ],
    "out of range": [
        ("00_start_here", "samples", 0, "an integer from 1 to 200"),
        ("01_autoencoders", "latent_dims", "[2, 0]", "a list of integers from 1 to 256"),
        ("02_mse_objective", "noise", 1.5, "a number from 0.0 to 1.0"),
        ("03_vae_elbo", "nll_samples", 0, "an integer from 1 to 100000"),
        ("04_gan_training", "seeds", "[0, -1]", "a list of integers from 0 to"),
        ("05_diffusion", "fourier_frequencies", "[1, -2]", "a list of numbers from 0.0 to 1000.0"),
        ("06_comparison", "latent_dim", 0, "an integer from 1 to 256"),
    ],
    "unknown choice": [
        ("00_start_here", "dataset", "cifar", "one of 'digits', 'mnist', 'fashion_mnist'"),
        ("01_autoencoders", "dataset", "svhn", "one of 'digits', 'mnist', 'fashion_mnist'"),
        ("02_mse_objective", "dataset", "MNIST", "one of 'digits', 'mnist', 'fashion_mnist'"),
        ("05_diffusion", "dataset", "cifar10", "one of 'digits', 'mnist', 'fashion_mnist'"),
        ("03_vae_elbo", "likelihood", "poisson", "one of 'bernoulli', 'gaussian'"),
        ("04_gan_training", "loss", "lsgan", "one of 'non_saturating', 'minimax', 'hinge', 'wgan_gp'"),
        ("05_diffusion", "schedule", "sigmoid", "one of 'linear', 'cosine'"),
        ("06_comparison", "dataset", "celeba", "one of 'digits', 'mnist', 'fashion_mnist'"),
    ],
    "unknown name": [
        ("00_start_here", "sample", 8, "its parameters are dataset, deterministic,"),
        ("01_autoencoders", "latent_dim", 8, "its parameters are anomaly_class, batch_size, dataset,"),
        ("02_mse_objective", "epoch", 3, "its parameters are batch_size, code_sizes,"),
        ("03_vae_elbo", "kl_warmup", 5, "its parameters are batch_size, beta, betas,"),
        ("04_gan_training", "gan_epochs", 3, "its parameters are batch_size, checkpoint_dir,"),
        ("05_diffusion", "epoch", 3, "its parameters are batch_size, checkpoint_dir, dataset,"),
        ("06_comparison", "gan_epoch", 3, "its parameters are batch_size, dataset,"),
    ],
    "empty results_dir": [
        (name, "results_dir", "", "(empty): results_dir must be a non-empty folder path")
        for name in ("00_start_here", "01_autoencoders", "02_mse_objective", "03_vae_elbo",
                     "04_gan_training", "05_diffusion", "06_comparison")
    ],
    "results_dir is a file": [
        (name, "results_dir", "FILE", "(it is a file): results_dir must be a non-empty folder path")
        for name in ("00_start_here", "01_autoencoders", "02_mse_objective", "03_vae_elbo",
                     "04_gan_training", "05_diffusion", "06_comparison")
    ],
    "other folders": [
        ("03_vae_elbo", "checkpoint_dir", "FILE", "(it is a file): checkpoint_dir must be a folder path"),
        ("04_gan_training", "checkpoint_dir", " ", "a folder path that is not an existing file"),
        ("06_comparison", "tensorboard_dir", "FILE", "(it is a file): tensorboard_dir must be a folder"),
    ],
}


@pytest.mark.parametrize("kind,notebook,name,value,says", [
    (kind, *case) for kind, cases in BAD_PARAMETERS.items() for case in cases
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_bad_parameter_stops_with_a_clear_message(tmp_path, kind, notebook, name, value, says):
    """Each fails in the validation cell, before any data is loaded or anything written, with
    one ValueError that names the parameter and what is allowed."""
    if value == "FILE":
        value = str(tmp_path / "a_file.txt")
        (tmp_path / "a_file.txt").write_text("not a folder")
    results = tmp_path / "results"
    parameters = {"results_dir": str(results), name: value}
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"), parameters=parameters,
            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
        )
    error = info.value
    assert error.ename == "ValueError"
    if kind == "unknown name":
        assert error.evalue.startswith(f"unknown parameter {name!r} for {notebook}")
    else:
        assert error.evalue.startswith(f"parameter {name}={value!r} is not allowed")
    assert says in error.evalue
    # it stopped in the validation cell: the first cell after papermill's injected parameters
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs))
    assert "injected-parameters" in code[failed - 1].metadata.get("tags", [])
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.ipynb"] + (["a_file.txt"] if (tmp_path / "a_file.txt").exists() else []))


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
    # normalised: no papermill, timing or widget metadata left behind by the run
    assert set(nb.metadata) <= {"colab", "kernelspec", "language_info"}, set(nb.metadata)
    assert {key for c in nb.cells for key in c.metadata} <= {"tags", "jupyter", "cellView"}
    for cell in nb.cells:  # only prose cells (a Colab form title) hide their source
        hidden = cell.metadata.get("jupyter", {}).get("source_hidden", False)
        assert hidden == (cell.cell_type == "code" and cell.source.lstrip().startswith("#@title"))
    tags = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tags) == 1


def markdown_tables(text):
    """The GitHub-flavoured tables in a Markdown text: lists of rows, each a list of cells
    (a ``\\|`` inside a cell is text, not a column break)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            current.append([c.strip() for c in line.replace("\\|", "\0").strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def committed_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            yield index, output


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_every_rendered_table_has_the_header_columns_in_every_row(path):
    nb = nbformat.read(path, as_version=4)
    texts = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    texts += [(i, "".join(o.get("data", {}).get("text/markdown", ""))) for i, o in committed_outputs(path)]
    found = 0
    for index, text in texts:
        for table in markdown_tables(text):
            found += 1
            assert len(table) >= 2 and set("".join(table[1])) <= set("-: "), (index, table[:2])
            widths = {len(row) for row in table}
            assert widths == {len(table[0])}, f"cell {index}: rows of {sorted(widths)} columns: {table[0]}"
    assert found, "no table found: the parser is broken"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_committed_outputs_show_no_stderr_warning_or_local_path(path):
    for index, output in committed_outputs(path):
        assert not (output.output_type == "stream" and output.name == "stderr"), (
            f"cell {index} shows stderr: {output.text[:200]!r}")
        text = output.get("text", "") + "".join(
            "".join(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
        assert "Warning" not in text, f"cell {index} shows a warning: {text[:200]!r}"
        for local in ("/work/", "/home/", "/tmp/", "site-packages"):
            assert local not in text, f"cell {index} shows a local path: {text[:200]!r}"


def test_the_table_parser_finds_a_broken_row():
    assert markdown_tables("| a | b |\n|---|---|\n| 1 \\| 2 | 3 |")[0][2] == ["1 \0 2", "3"]
    broken = markdown_tables("| a | b |\n|---|---|\n| largest |gap| | 3 |")[0]
    assert {len(r) for r in broken} == {2, 4}


# --------------------------------------------------------------------------- 01 autoencoders


def check_linear_autoencoder_is_pca(metrics):
    for k, ratio in metrics["linear_ratio_to_pca"].items():
        assert abs(ratio - 1) <= 0.03, f"k={k}: linear AE test MSE is {ratio:.4f} x PCA's"
    for k, angle in metrics["linear_largest_angle_deg"].items():
        assert angle < 10, f"k={k}: decoder subspace {angle:.1f} deg from PCA's"


def test_autoencoders_quality_gates_at_defaults(tmp_path):
    metrics = default_run_metrics("01_autoencoders", tmp_path, execute)
    check_linear_autoencoder_is_pca(metrics)
    assert set(metrics["linear_ratio_to_pca"]) == {"2", "8", "16"}
    # noise: the classic model does no better than the mean predictor, while PCA fitted on the
    # same rows saves about k/d = 4.1 % (measured 4.09 %): a code *can* save that much
    assert abs(metrics["noise_test_mse"] * 12 - 1) <= 0.02
    assert metrics["noise_test_mse"] >= 0.99 * metrics["noise_pca_floor"]
    assert metrics["noise_pca_floor"] == pytest.approx((1 - 32 / 784) / 12)
    assert metrics["noise_pca_test_mse"] < 0.97 * metrics["noise_mean_predictor"]
    # trained longer, noise still does not generalise while images do; on the training rows
    # PCA's in-sample error is the reference (measured 0.871), below the autoencoder's
    assert metrics["noise_longer_test_over_mean"] > 0.98
    assert metrics["noise_pca_train_over_mean"] < metrics["noise_longer_train_over_mean"]
    assert metrics["images_longer_test_over_mean"] < 0.5
    # and PCA with the same 32 numbers is far below the classic architecture (measured 7.4x)
    assert metrics["images_pca32_test_over_mean"] < 0.5 * metrics["images_longer_test_over_mean"]
    # nonlinearity wins at small k, PCA at large k (measured -41 % and -53 %, +57 % at k=32)
    assert metrics["dense_vs_pca"] == {"2": "below", "8": "below", "32": "above"}
    assert metrics["dense_below_pca"]["8"] >= 0.15 and metrics["conv_below_pca"]["8"] >= 0.15
    # the error is flat in the subspace: the rotation formula holds exactly, 70 degrees cost
    # under 1 % of test error, and every recipe is within 1 % of PCA's error while only the
    # reference recipe has the subspace (measured 0.4, 7.5 and 14.3 degrees)
    assert metrics["rotation_formula_max_relative_error"] < 1e-9
    assert 0 < metrics["rotation_70deg_test_cost"] < 0.01
    recipes = metrics["recipes"]
    assert all(r["ratio_to_pca"] < 1.01 for r in recipes.values())
    assert recipes["cosine decay, bias at mean"]["largest_angle_deg"] < 2
    changed = [r for name, r in recipes.items() if name != "cosine decay, bias at mean"]
    assert len(changed) == 2 and all(r["largest_angle_deg"] > 4 for r in changed)
    # an autoencoder is not a sampler: decoded Gaussian draws are far from the data
    assert metrics["gaussian_draws_distance_ratio"] > 1.2
    # the L1 penalty makes the over-complete code sparse (measured 111 -> 54 units per image)
    sparse = metrics["sparse"]
    assert sparse["l1_active_units"] < 0.7 * sparse["plain_active_units"]
    # a never-seen class is flagged well above chance, and codes retrieve their class
    auroc = metrics["anomaly_auroc"]["dense AE"]
    assert auroc["auroc"] - 3 * auroc["se"] > 0.75
    assert metrics["retrieval_precision_at_5"]["dense AE, k=8"]["precision"] > 0.85


def test_autoencoders_on_mnist(tmp_path, data_dir):
    metrics = execute("01_autoencoders", tmp_path, dataset="mnist", train_size=5000,
                      linear_epochs=20, epochs=2)
    check_linear_autoencoder_is_pca(metrics)
    # PCA's optimum here (5,000 training images) is close to the full-set figures
    # k=2 0.0557 and k=16 0.0269 quoted for MNIST
    assert metrics["pca_test_mse"]["2"] == pytest.approx(0.0557, rel=0.03)
    assert metrics["pca_test_mse"]["16"] == pytest.approx(0.0269, rel=0.03)
    assert metrics["dense_below_pca"]["8"] > 0


# --------------------------------------------------------------------------- 03 VAE and the ELBO


def check_linear_gaussian_identities(metrics):
    assert metrics["linear_elbo_above_log_px"] == 0  # ELBO <= log p(x) on every test image
    assert metrics["linear_gap_kl_max_relative"] < 1e-3  # gap = KL(q || true posterior)
    iwae = [metrics["linear_iwae_mean"][k] for k in ("1", "10", "100", "1000")]
    assert all(a <= b for a, b in zip(iwae, iwae[1:])), iwae  # non-decreasing in k
    log_px = metrics["linear_mean_log_px"]
    assert iwae[-1] <= log_px
    assert metrics["linear_gap_closed_k1000"] > 0.5  # k = 1000 closes most of the gap
    # E[L_1] = ELBO: the one-sample bound's mean is within 3 standard errors of the exact ELBO
    assert abs(metrics["linear_l1_minus_elbo"]) < 3 * metrics["linear_l1_minus_elbo_se"]
    # the gap splits into approximation + amortisation, checked to rounding, q* is the best
    # diagonal q, and at probabilistic PCA's maximum likelihood the ELBO is tight
    assert metrics["linear_split_max_error"] < 1e-8
    assert metrics["linear_approximation_kl_max_error"] < 1e-8
    assert metrics["linear_best_diagonal_nudge_gain"] <= 0
    assert metrics["linear_ml_gap_max"] < 1e-8
    # ... and an affine encoder (the linear VAE's form) reaches q* there: no amortisation gap either
    assert metrics["linear_ml_affine_encoder_gap_max"] < 1e-6
    assert metrics["linear_train_log_px"] <= metrics["ppca_ml_train_log_px"] + 1e-6


def test_vae_quality_gates_at_defaults(tmp_path):
    metrics = default_run_metrics("03_vae_elbo", tmp_path, execute)
    check_linear_gaussian_identities(metrics)
    # at the defaults k = 1000 closes nearly all of the 0.83-nat gap (measured 97 %; on MNIST
    # after 2 linear epochs the gap is larger and 78 % of it closes)
    assert metrics["linear_gap_closed_k1000"] >= 0.9
    assert metrics["kl_check_largest_z"] < 3  # closed-form KL vs Monte Carlo, within 3 s.e.
    assert metrics["nll"] <= metrics["neg_elbo"]  # the IS estimate is the tighter bound
    assert metrics["nll"] < 26  # measured 22.7 nats on digits (dynamic binarization)
    assert metrics["active_units"] >= 6
    # without a remedy the doubled code collapses on a majority of seeds (measured: every seed, no
    # dimension above 0.1 nats); warm-up and free bits each keep >= 4 dimensions open on every seed
    # (measured 7-9 and 16)
    collapse = metrics["collapse"]
    plain, warm, free = collapse["no remedy"], collapse["warm-up 20 epochs"], collapse["free bits λ = 0.1"]
    closed = [n == 0 for n in plain["dimensions_above_0_1_nats"]]
    assert sum(closed) > len(closed) / 2
    assert min(warm["dimensions_above_0_1_nats"]) >= 4 and min(free["dimensions_above_0_1_nats"]) >= 4
    assert max(warm["neg_elbo"]) < min(plain["neg_elbo"]) - 1  # and the code is worth nats (measured 3.3)
    # IWAE training (k = 5 and 50) beats the VAE's test NLL at equal epochs, paired over seeds,
    # beyond 2 standard errors (measured -0.28 +- 0.02 and -0.41 +- 0.02 nats)
    vae_nll = np.asarray(metrics["iwae"]["1"]["nll"])
    for k in ("5", "50"):
        difference = np.asarray(metrics["iwae"][k]["nll"]) - vae_nll
        se = difference.std(ddof=1) / np.sqrt(len(difference))
        assert difference.mean() < -2 * se, (k, difference)
    # the encoder's gradient SNR falls and the decoder's rises from k = 1 to k = 500
    # (measured 0.26 -> 0.09 and 0.87 -> 8.6)
    snr = metrics["gradient_snr"]
    assert snr["500"]["encoder"] < 0.7 * snr["1"]["encoder"]
    assert snr["500"]["decoder"] > 3 * snr["1"]["decoder"]
    # the beta sweep trades rate for distortion monotonically
    sweep = [metrics["beta_sweep"][b] for b in ("0.25", "0.5", "1", "2", "4")]
    assert all(a["rate"] > b["rate"] for a, b in zip(sweep, sweep[1:]))
    assert all(a["distortion"] < b["distortion"] for a, b in zip(sweep, sweep[1:]))


def test_vae_rerun_with_checkpoint_dir_resumes_and_logs_to_tensorboard(tmp_path):
    from support import tensorboard_logs

    small = dict(train_size=320, test_size=64, epochs=3, kl_warmup_epochs=1, sweep_epochs=1,
                 linear_epochs=1, nll_samples=10, betas=[1.0], seeds=1, iwae_samples=[1, 2],
                 snr_samples=[1, 2], checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=5)
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    logs = tmp_path / "logs"
    first = execute("03_vae_elbo", tmp_path / "first", tensorboard_dir=str(logs), **small)
    assert first["vae_epochs_run"] == 3
    # the second run restores the first one's last checkpoint (end of epoch 3) and trains one more
    again = execute("03_vae_elbo", tmp_path / "again", **{**small, "epochs": 4})
    assert again["vae_epochs_run"] == 1
    # every training of the first run logged: linear VAE, main VAE, 2-D VAE, 3 collapse runs
    # (no remedy, warm-up, free bits), 1 beta, 2 IWAE comparison runs (k = 1, 2)
    runs = sorted(p.name for p in logs.iterdir())
    assert runs == [f"{i:02d}-VAE" for i in range(9)]
    main = tensorboard_logs.read_events(logs / "01-VAE")
    assert [step for step, _ in main["train"]["loss"]] == [0, 1, 2]
    assert {"samples", "reconstructions", "kl"} <= set(main["train"]) and "loss" in main["validation"]


def test_vae_on_mnist_short_budget(tmp_path, data_dir):
    # 20,000 training images for 15 epochs: the main VAE gets the steps of 5 epochs of all 60,000, and
    # every other training of the notebook a third of them
    metrics = execute("03_vae_elbo", tmp_path, dataset="mnist", train_size=20_000, latent_dim=32,
                      widths=[512, 256], epochs=15, kl_warmup_epochs=1, sweep_epochs=1, linear_epochs=2,
                      test_size=1000, nll_samples=100, betas=[1.0], seeds=1, iwae_samples=[1, 2],
                      snr_samples=[1, 2])
    check_linear_gaussian_identities(metrics)
    assert metrics["mnist_nll"] == metrics["nll"] <= metrics["neg_elbo"]
    assert metrics["mnist_nll"] < 106  # measured 98.7 nats (k=100, 1,000 test images)


# --------------------------------------------------------------------------- 02 the MSE objective


def test_mse_objective_quality_gates_at_defaults(tmp_path):
    metrics = default_run_metrics("02_mse_objective", tmp_path, execute)
    assert metrics["gaussian_nll_identity_max_relative_error"] < 1e-5
    # on grey levels exp(-BCE) is no density (its integral is at most 1/2, at x_hat = 1/2), and the BCE is
    # smallest at x_hat = x (to the grid's step)
    assert metrics["bce_integral_largest"] < 0.5 + 1e-6
    assert metrics["bce_argmin_max_error"] < 1e-5
    assert metrics["sigma_gradient_cosine"] > 0.99999
    assert metrics["loop_fit_max_weight_difference"] <= 1e-5  # the seven-step loop == fit
    message = metrics["nan_guard_message"]
    assert message.startswith("Training diverged") and "smaller learning rate" in message
    # MSE against BCE: three seeds each, every model learned (mean image: about 0.06)
    assert len(metrics["objective_seeds"]) == 3
    assert all(len(v) == 3 and max(v) < 0.02 for v in metrics["objective_test_mse"].values())
    # optimizers: rates chosen on validation from their grids, both train well (measured 0.0120, 0.0123)
    assert metrics["optimizer_best_rate"]["sgd"] in (0.3, 1.0, 3.0)
    assert max(metrics["optimizer_test_mse"].values()) < 0.02
    assert metrics["adam_seed_sd"] > 0
    # small training set: chosen on validation, scored once on test
    assert metrics["early_stopping_restored_val_mse"] == pytest.approx(
        metrics["early_stopping_best_val_loss"], rel=1e-5)  # the best weights are restored
    assert metrics["overfit_final_val_mse"] > 10 * metrics["overfit_final_train_mse"]  # measured 340x
    difference, se = metrics["test_mse_difference_from_fixed_budget"]["early stopping"]
    assert difference < -2 * se  # early stopping beats the fixed budget on test (measured -0.0016 +- 0.0002)
    for kind in ("gaussian", "masking"):
        scores = metrics["denoising"][kind]
        assert scores["denoiser_on_corrupted"] < 0.7 * scores["plain_on_corrupted"]
        difference, se = scores["difference"]  # paired over the test images
        assert difference < -2 * se
    representation = metrics["representation"]
    ae, pca = representation["AE (MSE), k=8"], representation["PCA, k=8"]
    # measured: AE 94.2 %, PCA 89.7 %, pixels 96.7 % (chance 10 %; binomial s.e. about 1.5 %)
    assert ae["linear probe"] >= pca["linear probe"] - 0.02
    assert min(ae["linear probe"], pca["linear probe"]) > 0.8
    assert ae["test MSE"] < pca["test MSE"]
    assert len(metrics["sweep"]) == 9 and set(metrics["sweep_pca"]) == {"2", "8", "32"}
    # at k = 32 PCA beats every autoencoder of the sweep (measured 0.0026 against 0.0037-0.0076)
    ae_32 = min(r["test_mse"] for r in metrics["sweep"] if r["k"] == 32)
    assert metrics["sweep_pca"]["32"]["test_mse"] < ae_32


def test_mse_objective_other_parameters(tmp_path):
    metrics = execute("02_mse_objective", tmp_path, latent_dim=4, epochs=20, small_train_size=30,
                      code_sizes=[4], depths=[0, 1], sweep_epochs=5)
    assert metrics["loop_fit_max_weight_difference"] <= 1e-5
    assert [r["depth"] for r in metrics["sweep"]] == [0, 1]
    assert set(metrics["sweep_pca"]) == {"4"}
    assert "AE (MSE), k=4" in metrics["representation"]
    assert metrics["early_stopping_restored_val_mse"] == pytest.approx(
        metrics["early_stopping_best_val_loss"], rel=1e-5)


# --------------------------------------------------------------------------- 04 GAN training


def test_gan_quality_gates_at_defaults(tmp_path):
    metrics = default_run_metrics("04_gan_training", tmp_path, execute)
    # V(D*, G) = -log 4 + 2 JSD, and a discriminator fitted from samples approaches D* from below
    assert metrics["jsd_identity_max_error"] < 1e-3
    assert 0 <= metrics["learned_d_below_optimal"] < 0.01
    assert metrics["saturation_gradient_ratio"] > 100  # measured 995 at D(G(z)) = 0.001
    # the non-saturating generator follows the gradient of KL(p_g || p) - 2 JSD at the optimal D
    assert metrics["ns_gradient_identity_max_error"] < 1e-6
    # ring8, VEEGAN protocol, 5 seeds: the cosine-decayed rate covers every mode at >= 90 % high
    # quality on all seeds but at most one (measured 8/8 at 93-95 % on all five; with XLA's float
    # path, one seed ended at 7/8 and 88 %, so "every seed" would hold on one float path only), and
    # settles: the seeds' spread of high quality is a small fraction of the constant rate's (measured s.d.
    # 1.0 against 26.7 points; the prose reports its exact permutation test, p = 0.17 at 5 runs a side,
    # a finding it does not claim). The constant rate does not settle: its
    # final high quality is below 90 % on some seed (measured 34-93 %).
    def good_seeds(setup):
        return sum(m == 8 and q >= 0.90 for m, q in zip(setup["modes"], setup["high_quality"]))
    stable, plain = metrics["toy"]["cosine"], metrics["toy"]["plain"]
    assert len(stable["modes"]) >= 5
    assert good_seeds(stable) >= len(stable["modes"]) - 1
    assert np.std(stable["high_quality"], ddof=1) < np.std(plain["high_quality"], ddof=1) / 3
    assert min(plain["high_quality"]) < 0.90
    # "what the tests detect is how much a run moves late in training" (the summary): the plain runs
    # keep moving, the cosine runs settle, by Mann-Whitney's exact test at the bar of section 3's two tests
    # of settling, 0.025 (measured 30-79 points against 1-3 within a run: every plain run above every
    # cosine one, p = 0.008, the smallest p of 5 against 5; one swapped pair would still give 0.016)
    swing = metrics["toy_late_swing"]
    assert np.median(swing["plain"]) > 5 * max(swing["cosine"]), swing
    assert metrics["toy_late_swing_p"] < 0.025
    # mode collapse, shown: the fast-D set-up (D rate 33 times G's, G's rate 10 times below the
    # others', batch 256) drops two or more of the 8 modes at >= 90 % high quality on a majority of
    # seeds (probes: 9 of seeds 0-9, on 1-3 modes at 93-99 %), which the prose calls few modes, each
    # sharp. The prose does not say which change causes it (exercise 7; a probe: the two rates at
    # batch 128 collapsed 4 of 5 seeds, the slow G alone 2, the fast D alone and the batch alone 0)
    fast = metrics["toy"]["fast D + cosine"]
    sharp_collapses = sum(m <= 6 and q >= 0.90 for m, q in zip(fast["modes"], fast["high_quality"]))
    assert sharp_collapses > len(fast["modes"]) / 2
    # section 4, the same cosine schedule: the hinge loss covers every mode at >= 90 % on all seeds
    # but at most one (measured 8/8 at 93-95 % on all five); WGAN-GP (lambda 0.1) covers every mode
    # too, at a high quality below the non-saturating run's beyond the paired Student's t interval
    # over seeds (measured, its steps on half the batch: 83-87 % against 93-95 %), which the text
    # says without naming a cause; on the very points of the exact matching its critic's gap is at
    # most their W1 on every seed (a strict check of the Lipschitz constraint there); spectral
    # normalisation fails on some seed (measured 4 of 5), far off the data there (W1 over ten
    # times the data's own floor; measured 2.5 against 0.1), with its discriminator far flatter
    # than its bound of 1 (the text's hypothesis for the failures it counts; measured 0.02)
    objectives = metrics["objectives"]
    hinge, wgan = objectives["hinge + cosine"], objectives["WGAN-GP + cosine"]
    reference = objectives["non-saturating + cosine (section 3)"]
    assert good_seeds(hinge) >= len(hinge["modes"]) - 1
    assert all(m == 8 for m in wgan["modes"])
    # at the section's Bonferroni level: 2 measures x 3 objectives read together (measured -9.2 +- 0.6 points)
    wgan_diff = support_metrics.paired_difference(reference["high_quality"], wgan["high_quality"],
                                                  level=1 - 0.05 / 6)
    assert wgan_diff.finding and wgan_diff.mean < 0, wgan_diff
    assert all(gap <= w1 for gap, w1 in zip(metrics["wgan_gap_same_points"], wgan["w1"]))
    spectral = objectives["spectral norm + cosine"]
    failed = [w1 for q, w1 in zip(spectral["high_quality"], spectral["w1"]) if q < 0.5]
    assert len(failed) >= 1 and min(failed) > 10 * np.mean(metrics["w1_floor"]), spectral
    assert objectives["spectral norm + cosine"]["median_gradient_norm"] < 0.2
    # images: every class, none rare, and far from the untrained generator
    assert metrics["classifier_accuracy"] >= 0.95
    assert metrics["classes_present"] == 10
    assert metrics["min_class_fraction"] >= 0.03
    assert metrics["fid_dcgan"] <= metrics["fid_untrained"] / 5
    # above the real-data floor beyond 2 paired-bootstrap s.e., as the summary says (measured 5.1 +- 1.2)
    assert metrics["fid_dcgan_minus_floor"] > 2 * metrics["fid_dcgan_minus_floor_se"]
    # scoring: precision and recall of real training images against test images (one
    # distribution) are both near 1 at the k the notebook uses (measured 0.94 and 0.98 at k = 5)
    assert metrics["real_precision"] >= 0.9 and metrics["real_recall"] >= 0.9
    # the FID floor is the 1/n bias: real vs real falls as n grows
    by_n = list(metrics["fid_real_by_n"].values())
    assert by_n[0] > 2 * by_n[-1]
    # resume: interrupted at 300 after the checkpoint at 200, rerun: no step lost or repeated
    resume = metrics["resume"]
    assert resume["final_step"] == resume["uninterrupted_step"] == 600
    assert (resume["start_step"], resume["steps_run"]) == (200, 400)
    assert resume["max_weight_difference"] <= 1e-6


def test_gan_rerun_as_a_wgan_gp_with_checkpoint_dir_resumes_and_records_the_critics_estimate(tmp_path):
    # one pair of runs for two options: the DCGAN as a WGAN-GP (five critic steps; section 5 plots
    # the critic's estimate E f(x) - E f(G(z)) per epoch) with checkpoints, then a rerun that resumes
    small = dict(epochs=3, toy_steps=20, seeds=[0], checkpoint_dir=str(tmp_path / "checkpoints"),
                 checkpoint_every=30, loss="wgan_gp", d_steps=5)
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    first = execute("04_gan_training", tmp_path / "first", **small)
    assert (first["dcgan_start_step"], first["dcgan_steps_run"]) == (0, 3 * (1437 // 64))
    # a critic that has started to separate the two gives a positive gap
    gap = first["dcgan_output_gap"]
    assert len(gap) == 3 and all(np.isfinite(gap))
    assert gap[-1] > 0
    assert first["fid_dcgan"] < first["fid_untrained"]
    again = execute("04_gan_training", tmp_path / "again", **{**small, "epochs": 4})
    # the second run restores the checkpoint of the first one's last step and trains one epoch
    assert again["dcgan_start_step"] == first["dcgan_steps"]
    assert again["dcgan_steps"] == 4 * (1437 // 64)
    assert len(again["dcgan_output_gap"]) == 1


def test_gan_rerun_with_the_hinge_loss_and_spectral_norm(tmp_path):
    # the two alternatives of section 4, on images: the DCGAN trains with the hinge loss and a
    # spectrally normalised discriminator, and the notebook scores it as it scores the default
    metrics = execute("04_gan_training", tmp_path, loss="hinge", spectral_norm=True, epochs=3, toy_steps=20,
                      seeds=[0])
    assert metrics["dcgan_steps"] == 3 * (1437 // 64)
    assert np.isfinite(metrics["fid_dcgan"]) and metrics["fid_dcgan"] < metrics["fid_untrained"]


def test_gan_on_mnist(tmp_path, data_dir):
    # 6,000 training images (and so 6,000 samples against 6,000 test images in every score) for 7 epochs:
    # 651 DCGAN steps (measured: classifier 98.1 %, FID 112 against the untrained generator's 539, 10 classes)
    metrics = execute("04_gan_training", tmp_path, dataset="mnist", train_size=6000, epochs=7,
                      toy_steps=50, seeds=[0])
    assert metrics["classifier_accuracy"] >= 0.97
    assert metrics["classes_present"] == 10
    assert metrics["fid_dcgan"] <= metrics["fid_untrained"] / 3
    assert metrics["fid_real"] < metrics["fid_dcgan"]


# --------------------------------------------------------------------------- 05 comparison


def test_diffusion_quality_gates_at_defaults(tmp_path):
    metrics = default_run_metrics("05_diffusion", tmp_path, execute)
    # the identities, to numerical precision
    assert metrics["tweedie_max_error"] < 1e-10
    assert metrics["posterior_max_error"] < 1e-10
    assert metrics["step_term_max_relative_error"] < 1e-8
    assert metrics["step_term_monte_carlo_max_z"] < 4  # the KL against Monte Carlo, within 4 s.e.
    # DSM - ESM is the same constant for every score model, to Monte Carlo precision (paired s.e.)
    assert metrics["dsm_minus_esm_max_z"] < 4
    # the exact-predictor ELBO of Gaussian data is below log p at every T, its gap falling in T and
    # staying above its limit d gamma / 2, and reaching it: at T = 1,024,000 within 1 % of the limit
    # (measured 0.5783 linear, 0.5779 cosine, against 0.5772)
    for gaps in metrics["gaussian_elbo_gap"].values():
        assert all(g > metrics["gaussian_elbo_gap_limit"] for g in gaps)
        assert all(a > b for a, b in zip(gaps, gaps[1:]))
        assert gaps[-1] < 1.01 * metrics["gaussian_elbo_gap_limit"], gaps
    assert metrics["gaussian_elbo_above_log_p_theta"] < 0  # per example, against the model's exact log p
    # the Monte Carlo ELBO estimator that scores the images agrees with the exact bound (measured z within
    # +-2.2 over six seeds at T = 200; heavy-tailed at T = 1000, which the notebook does not use), L_T exact
    assert abs(metrics["elbo_terms_check_z"]) < 4
    assert metrics["elbo_terms_prior_error"] < 1e-12
    # the learned score points the exact way where the noised data have mass (measured >= 0.994)
    assert min(min(v) for v in metrics["score_median_cosine"].values()) >= 0.95
    # ring8: every mode on every seed, and >= 80 % of samples within 3 sigma (measured 95.4-96.3 %)
    ring = metrics["ring"]
    assert min(ring["modes"]) == 8
    assert min(ring["high_quality"]) >= 0.8
    # DDIM: more steps, sharper samples (5 steps measured 2 %, 100 steps 83 %)
    ddim = metrics["ddim"]["high_quality"]
    assert ddim[-1] > ddim[0] + 0.3
    # ... because of the network: with the exact predictor 100 deterministic steps are sharp (measured 99.9 %)
    assert metrics["ddim"]["exact_predictor_high_quality"][-1] >= 0.95
    # eta = 1 over every step is the ancestral sampler, to float32 rounding over 200 steps (measured 1e-4;
    # other draws would differ by the ring's scale, about 2)
    assert metrics["ddim"]["eta_1_all_steps_vs_ancestral"] < 1e-2
    assert metrics["chain_max_z"] < 4  # step-by-step chains against the one-jump moments
    # the first steps' variance mismatch against 1/2 (1/(t-1) - log(t/(t-1))), approximate (measured 3e-3)
    assert metrics["gamma_per_step_max_error"] < 0.01
    ceilings = metrics["high_quality_ceilings"]
    assert ceilings["ddpm_posterior_means"] > ceilings["exact_samples"] == pytest.approx(1 - np.exp(-4.5))
    # Langevin with the learned scores: every mode, and the Tweedie step puts most samples on one
    assert metrics["langevin"]["denoised_modes"] == 8
    assert metrics["langevin"]["denoised_high_quality"] >= 0.8
    check_diffusion_on_images(metrics["images"])
    images = metrics["images"]
    # digits, dynamically binarized as notebook 03's VAE: 1,000 samples cover every class, none under 3 %
    # (measured 5.5 %); the VAE trained for the same steps covers every class too
    assert images["classes_present"] == 10 and images["min_fraction"] >= 0.03
    assert images["vae_classes_present"] == 10
    # against the binarized test images the DDPM's draws learned the pixels' dependencies: their FID is under
    # half of independent pixels', beyond 3 s.e. (measured 4.45 +- 0.83 against 16.09 +- 1.71; the binarized
    # floor 2.33, the VAE's draws 3.33 +- 0.95). Issue 20's gate, the DDPM's FID below the VAE's, is not met.
    assert images["fid_reference"] == "binarized test images"
    independent_gap = images["fid_independent_pixels"] - images["fid"]
    assert independent_gap > 3 * np.hypot(images["fid_se"], images["fid_independent_pixels_se"])
    assert images["fid"] < images["fid_independent_pixels"] / 2
    assert images["fid_binary_floor"] < images["fid_independent_pixels"] / 2
    # the words of the DDPM-against-VAE reading follow the paired difference (measured +1.12 with the
    # independent s.e. 1.26 before the pairing)
    value, se = images["minus_vae"], images["minus_vae_se"]
    expected = "below" if value < -2 * se else "above" if value > 2 * se else "within 2 s.e. of"
    assert images["versus_vae"] == expected
    # DDIM on images (section 7): the same network's deterministic draws cover every class at every step
    # count and have learned the pixels' dependencies (measured 2.54 +- 0.66 with 100 steps); the words of
    # the reading follow the paired differences (measured against the ancestral draws -1.91 +- 0.98, against
    # the VAE's -0.79 +- 1.13: both within 2 s.e. on one training; notebook 06 compares them over seeds)
    ddim_images = images["ddim"]
    assert min(ddim_images["classes_present"]) == 10
    assert ddim_images["fid"][-1] < images["fid_independent_pixels"] / 2
    for versus, key in (("versus_ancestral", "minus_ancestral"), ("versus_vae", "minus_vae")):
        value, se = ddim_images[key], ddim_images[f"{key}_se"]
        expected = "below" if value < -2 * se else "above" if value > 2 * se else "within 2 s.e. of"
        assert ddim_images[versus] == expected, (versus, value, se)
    # the prose: L_simple's bound is loose, far above the VAE's on the same images (measured 229.5 +- 5.5
    # against 23.2 nats) and above a fair coin's 44.4, and most of it comes from the first tenth of the steps
    assert images["neg_elbo"] - 2 * images["neg_elbo_se"] > images["coin_neg_elbo"] > images["vae_neg_elbo"]
    assert images["first_tenth_share"] > 0.5


def check_diffusion_on_images(images):
    """What holds for the image model at any budget: its terms add up, and the bound's two estimates
    (t at random, every t) agree within their standard errors."""
    terms = images["prior"] + images["steps_term"] + images["decoder"]
    assert images["neg_elbo"] == pytest.approx(terms, rel=1e-9)
    assert images["decoder"] >= 0 and images["prior"] >= 0 and images["neg_elbo_se"] > 0
    assert abs(images["steps_by_t_z"]) < 4
    # the VAE retrained with the DDPM's steps, same images: its importance-sampled NLL is below its -ELBO
    assert images["vae_here_nll"] <= images["vae_here_neg_elbo"]


def test_diffusion_refuses_more_ddim_steps_than_timesteps_before_training(tmp_path):
    began = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError, match="sampling_steps=.* above timesteps=20"):
        execute("05_diffusion", tmp_path, timesteps=20, sampling_steps=[5, 50])
    assert time.perf_counter() - began < 60  # stopped before the first training
    assert not (tmp_path / "results").exists()


def test_diffusion_rerun_resumes_from_checkpoints(tmp_path):
    small = dict(toy_steps=40, seeds=[0, 1], timesteps=20, sampling_steps=[5, 10], toy_batch_size=64,
                 epochs=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = execute("05_diffusion", tmp_path / "a", checkpoint_dir=str(tmp_path / "ckpt"), **small)
    again = execute("05_diffusion", tmp_path / "b", checkpoint_dir=str(tmp_path / "ckpt"), **small)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["images", "ring-seed0", "ring-seed1"]
    assert first["ring"]["modes"] == again["ring"]["modes"]  # restored, not retrained
    assert again["ring"]["train_seconds"][0] < first["ring"]["train_seconds"][0]


def test_diffusion_on_mnist_short_budget(tmp_path, data_dir):
    metrics = execute("05_diffusion", tmp_path, dataset="mnist", train_size=5000, test_size=500, epochs=10,
                      toy_steps=40, seeds=[0], sampling_steps=[5, 10], toy_batch_size=64)
    images = metrics["images"]
    assert images["dataset"] == "mnist" and images["vae_neg_elbo"] is None  # notebook 03's row is digits only
    check_diffusion_on_images(images)
    assert images["coin_neg_elbo"] == pytest.approx(784 * np.log(2))
    # after 390 steps of 128 images the samples already show most digits (measured 7 of 10)
    assert images["classes_present"] >= 5


def check_leaderboard(metrics):
    """What holds at any budget: the bounds are ordered on every seed, every row the text promises exists."""
    likelihood = metrics["likelihood"]
    for name in ("VAE", "IWAE"):  # -ELBO >= IS-NLL of the same model on the same images, seed by seed
        bounds = likelihood[f"{name}_neg_elbo"]["per_seed"]
        estimates = likelihood[f"{name}_is_nll"]["per_seed"]
        assert all(e >= n for e, n in zip(bounds, estimates))
    assert metrics["coin_nll"] == pytest.approx(np.log(2) * metrics["pixels"])
    assert {"autoencoder + mixture", "VAE, Bernoulli: mixture, means", "VAE, Gaussian: mixture, means",
            "VAE, Bernoulli: prior, means",
            "VAE, Bernoulli: prior, draws", "MADE: draws", "GAN", "WGAN-GP",
            "DDPM: probabilities", "DDPM: draws", "DDPM: DDIM draws"} <= set(metrics["samples"])
    iwae = f"IWAE, k = {metrics['iwae_samples']}"
    assert set(metrics["test_mse"]) == {"autoencoder", "VAE, Gaussian", "VAE, Bernoulli", iwae}
    for row in metrics["samples"].values():
        assert all(np.isfinite(row["fid"]["per_seed"]))


def test_comparison_leaderboard_at_defaults(tmp_path):
    from support import data, notebook

    metrics = default_run_metrics("06_comparison", tmp_path, execute)
    check_leaderboard(metrics)
    assert len(metrics["seeds"]) >= 3
    # every likelihood is scored on notebook 03's binary test images: the test set binarized with its seed + 1
    seed_03 = {p.name: p.default for p in notebook.schema("03_vae_elbo")}["seed"]
    x_test, _ = data.load("digits", "test")
    assert metrics["binary_test_checksum"] == int(data.binarize(x_test, seed=seed_03 + 1).sum())
    likelihood = metrics["likelihood"]
    # MADE's exact NLL has learnt how pixels go together: far below independent pixels (measured 22.6 vs 27.3)
    assert likelihood["MADE_exact"]["mean"] < metrics["independent_pixels_nll"] - 3
    # IWAE-trained IS-NLL below the VAE's beyond the 95 % Student's t interval, paired over seeds (the
    # issue asks for 2 s.e.; with 3 seeds the t-interval is 4.30 s.e.; measured -0.22 +- 0.02 nats)
    difference = support_metrics.paired_difference(likelihood["VAE_is_nll"]["per_seed"],
                                                   likelihood["IWAE_is_nll"]["per_seed"])
    assert difference.finding and difference.mean < 0, difference
    claims = metrics["claims"]
    assert claims["iwae_vs_vae_is_nll"] == "below"
    # the fairness claim of section 4: the KL term costs reconstruction (autoencoder against the Gaussian VAE,
    # both trained on grey levels)
    assert claims["ae_vs_gaussian_vae_mse"] == "below"
    # every sampler covers all 10 classes on every seed
    for name, row in metrics["samples"].items():
        assert row["fewest_classes"] == 10, name
    # binary samplers are scored against the binarized test images, grey ones against the grey test images
    assert metrics["fid_reference"] == {"grey": "test images",
                                        "binary": "test images binarized as in section 2"}
    # the DDPM's own sampler is its draws: its decoder probabilities are nearly binary (measured 97.3 % of
    # them within 0.01 of 0 or 1)
    assert metrics["ddpm_probabilities_near_binary"] > 0.9
    # the DDPM's DDIM draws (its leaderboard sampler) score below its ancestral draws, paired over seeds
    # (measured 3.19 +- 0.30 against 5.65 +- 0.24; the VAE's draws 3.06 +- 0.45, not told apart)
    assert claims["ddpm_ddim_vs_ancestral_fid"] == "below"
    # the DDPM's L_simple bound is loose: above a fair coin (measured 243.8 against 44.4 nats, every t)
    assert likelihood["DDPM_neg_elbo"]["mean"] > metrics["coin_nll"]


def test_comparison_on_mnist_short_budget(tmp_path, data_dir):
    metrics = execute("06_comparison", tmp_path, dataset="mnist", train_size=3000, test_size=300,
                      seeds=[0], epochs=5, made_epochs=5, gan_epochs=3, wgan_epochs=1, diffusion_epochs=5,
                      samples=300, nll_samples=50)
    check_leaderboard(metrics)
    assert metrics["pixels"] == 784
    # MADE learns MNIST's pixel dependencies within 5 epochs of 3,000 images (measured MNIST_MADE)
    assert metrics["likelihood"]["MADE_exact"]["mean"] < metrics["independent_pixels_nll"] - 20


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_with_op_determinism_records_identical_metrics(tmp_path):
    """Two runs of notebook 06 (autoencoder, VAE, GAN, classifier) with the same seed and
    ``deterministic`` on record the same metrics, times aside; the first also writes
    TensorBoard logs, which must not change any result."""
    small = dict(train_size=320, test_size=128, seeds=[0], epochs=3, made_epochs=2, gan_epochs=2,
                 wgan_epochs=1, diffusion_epochs=2, samples=100, nll_samples=20, deterministic=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = execute("06_comparison", tmp_path / "a", tensorboard_dir=str(tmp_path / "logs"), **small)
    second = execute("06_comparison", tmp_path / "b", **small)

    def without_times(metrics):
        return {key: without_times(value) if isinstance(value, dict) else value
                for key, value in metrics.items() if not key.endswith(("_s", "_seconds"))}

    assert without_times(first) == without_times(second)
    assert len(list((tmp_path / "logs").iterdir())) == 8  # every training of the one seed logged



STRATEGY_CHECK = """
import keras
built = [v for v in list(globals().values()) if isinstance(v, keras.Model)]
assert built, "no Keras model in the notebook's namespace"
kinds = {type(m.distribute_strategy).__name__ for m in built}
assert kinds == {"MirroredStrategy"}, kinds
assert type(run.distribute_strategy).__name__ == "MirroredStrategy"
"""


@pytest.mark.parametrize("name,small", [
    ("01_autoencoders", dict(train_size=300, latent_dims=[2], linear_dims=[2], linear_epochs=2, epochs=1)),
    ("03_vae_elbo", dict(train_size=320, test_size=64, epochs=2, kl_warmup_epochs=1, sweep_epochs=1,
                         linear_epochs=2, nll_samples=10, betas=[1.0], seeds=1, iwae_samples=[1, 2],
                         snr_samples=[1, 2])),
    ("06_comparison", dict(train_size=400, test_size=100, seeds=[0], epochs=2, made_epochs=1, gan_epochs=1,
                           wgan_epochs=1, diffusion_epochs=1, samples=50, nll_samples=5)),
])
def test_the_strategy_parameter_builds_and_trains_every_keras_model_under_it(tmp_path, name, small):
    """``-p strategy mirrored``: the notebook runs through, and every Keras model it leaves
    in its namespace was built under a ``MirroredStrategy`` (one replica per local GPU; on a
    machine without GPUs, the CPU)."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(STRATEGY_CHECK))
    nbformat.write(nb, tmp_path / "source.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "source.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={**small, "strategy": "mirrored", "results_dir": str(tmp_path / "results")},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
    )
    assert (tmp_path / "results" / f"{name}.json").exists()


def test_multi_worker_without_a_cluster_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(papermill.PapermillExecutionError, match="needs the TF_CONFIG environment variable"):
        execute("03_vae_elbo", tmp_path, strategy="multi_worker")
