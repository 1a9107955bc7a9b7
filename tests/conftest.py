"""Shared test set-up: no downloads, the reference data folder when it exists, temp outputs."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# No test downloads anything: the loader must find files or fail with its offline error.
os.environ["SUPPORT_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
