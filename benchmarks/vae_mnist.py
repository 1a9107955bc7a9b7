"""This project's MNIST likelihood: a VAE trained by `support` and scored by the paper protocol.

Notebook 03 sets its figures beside Burda et al. (2016, Table 1). At its defaults it runs on the
digits, so its own MNIST row comes from here: a dense Bernoulli VAE with Burda et al.'s
one-stochastic-layer sizes (two hidden layers of 200 units, a 50-d code; ReLU here, tanh there),
trained with :func:`support.training.train_vae` on the 60,000 dynamically binarized training
images (Adam, batch 100, a 20-epoch KL warm-up as in notebook 03), then scored by
:meth:`VAE.importance_sampled_nll` with ``k = 5000`` importance samples on all 10,000 test images,
binarized once (seed 1, as the notebook does). ``--samples k`` trains an IWAE instead.

The result goes to ``benchmarks/results/vae_mnist.json`` (``--out``), which notebook 03 reads;
the budget (epochs, minutes, machine) is written beside the figure. MNIST is read from local
files only (``$SUPPORT_DATA_DIR``); nothing downloads.

    SUPPORT_DATA_DIR=/path/to/data python benchmarks/vae_mnist.py [--epochs 100] [--samples 1]
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines

from support import data
from support.models.vae import VAE
from support.training import train_vae

OUT = pathlib.Path(__file__).parent / "results" / "vae_mnist.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1, help="k of the training bound (1: VAE)")
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.samples < 1 or args.nll_samples < 1 or args.test_size < 1:
        parser.error("--epochs, --samples, --nll-samples and --test-size must be positive integers.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write to {args.out.parent}; pass --out with a writable path.")
    os.environ["SUPPORT_OFFLINE"] = "1"
    try:
        x_train, _ = data.load("mnist", "train")
        x_test, _ = data.load("mnist", "test")
    except data.DataError as exc:
        print(f"skipped: {str(exc).splitlines()[0]} (set SUPPORT_DATA_DIR to the folder of the IDX files)")
        return 1
    x_score = data.binarize(x_test[: args.test_size], seed=1)
    model = VAE((28, 28, 1), latent_dim=50, widths=(200, 200), samples=args.samples)
    began = time.perf_counter()
    train_vae(model, x_train, epochs=args.epochs, batch_size=100, learning_rate=1e-3, warmup_epochs=20,
              binarization="dynamic", seed=0)
    train_seconds = time.perf_counter() - began
    began = time.perf_counter()
    nll = model.importance_sampled_nll(x_score, k=args.nll_samples, seed=0)
    neg_elbo = -model.elbo(x_score, samples=10, seed=0)
    score_seconds = time.perf_counter() - began
    name = "VAE" if args.samples == 1 else f"IWAE k={args.samples}"
    result = {
        "model": name,
        "nll": round(float(nll.mean()), 2),
        "nll_se": round(float(nll.std(ddof=1) / np.sqrt(len(nll))), 2),
        "neg_elbo": round(float(neg_elbo.mean()), 2),
        "nll_samples": args.nll_samples,
        "test_images": len(x_score),
        "epochs": args.epochs,
        "train_minutes": round(train_seconds / 60, 1),
        "score_minutes": round(score_seconds / 60, 1),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores",
        "budget": (f"dense {name} 784-200-200-50 (ReLU), Adam 1e-3, batch 100, 20-epoch KL warm-up, "
                   f"{args.epochs} passes, {train_seconds / 60:.0f} min on {os.cpu_count()} CPU cores"),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
