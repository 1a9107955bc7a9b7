import gzip
import shutil
import struct

import numpy as np
import pytest

from support import data


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())  # no name, mtime 0: same bytes, same sha256


# --------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_split():
    x_train, y_train = data.load("digits", "train")
    x_test, y_test = data.load("digits", "test")
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10))
    # stratified: every class has 20 % +- 1 example of its images in the test set
    counts_train, counts_test = np.bincount(y_train), np.bincount(y_test)
    assert np.all(np.abs(counts_test - 0.2 * (counts_train + counts_test)) <= 1)
    # disjoint: no test image appears in the training set
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    duplicates = sum(row.tobytes() in train_rows for row in x_test.reshape(len(x_test), -1))
    assert duplicates <= 2  # the UCI set itself holds a couple of identical images


def test_digits_split_is_fixed_and_copies_are_independent():
    a, ya = data.load("digits", "train")
    a[:] = 0  # a caller may modify its copy
    b, yb = data.load("digits", "train")
    assert b.max() == 1.0 and np.array_equal(ya, yb)
    assert data.load("digits", "test", size=10)[0].shape == (10, 8, 8, 1)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match=r"dataset='cifar'.*digits, mnist, fashion_mnist"):
        data.load("cifar")
    with pytest.raises(ValueError, match="split='valid'"):
        data.load("digits", "valid")


# --------------------------------------------------------------------------- mixtures


@pytest.mark.parametrize("name,modes,std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_mixtures(name, modes, std):
    spec = data.mixture_spec(name)
    assert spec.n_modes == modes and spec.std == std
    x, y = data.load(name, "train", size=20_000, seed=3)
    assert x.shape == (20_000, 2) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(modes))
    residual = x - spec.centers[y]
    assert np.std(residual) == pytest.approx(std, rel=0.03)
    again, _ = data.load(name, "train", size=20_000, seed=3)
    test, _ = data.load(name, "test", size=20_000, seed=3)
    assert np.array_equal(x, again) and not np.array_equal(x, test)


def test_ring_radius_and_grid_spacing():
    ring = data.mixture_spec("ring8").centers
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 2.0, rtol=1e-6)
    grid = data.mixture_spec("grid25").centers
    assert sorted(set(grid[:, 0].tolist())) == [-4, -2, 0, 2, 4]


# --------------------------------------------------------------------------- IDX files


def test_read_idx_synthetic(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), images)
    raw = gzip.open(tmp_path / "x.gz").read()
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-1])
    with pytest.raises(data.DataError, match="but 23 bytes follow"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="junk.gz"):
        data.read_idx(tmp_path / "junk.gz")


def test_read_idx_real_files(data_dir):
    images = data.read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_load_real_sets(data_dir, name):
    x, y = data.load(name, "test", data_dir=data_dir)
    assert x.shape == (10_000, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 == x.min() and x.max() == 1.0
    assert len(y) == 10_000 and set(np.unique(y)) == set(range(10))
    if name == "fashion_mnist":
        assert np.bincount(y).tolist() == [1000] * 10  # its test set is balanced by design
    x_train, _ = data.load(name, "train", data_dir=data_dir, size=100)
    assert x_train.shape == (100, 28, 28, 1)


def test_corrupt_file_is_named_and_not_used(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPPORT_DATA_DIR", raising=False)
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte.gz is corrupt.*not used"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_corrupt_copy_of_a_real_file(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("SUPPORT_DATA_DIR", raising=False)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data_dir / "mnist" / name, folder / name)
    raw = bytearray((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw[-5] ^= 0xFF
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_offline_and_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORT_OFFLINE", "1")
    monkeypatch.setenv("SUPPORT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(data.DataError) as info:
        data.load("fashion_mnist", "test", data_dir=tmp_path / "arg")
    message = str(info.value)
    for folder in ("arg", "env", "keras/datasets"):
        assert str(tmp_path / folder / "fashion-mnist") in message
    assert "SUPPORT_DATA_DIR" in message and "dataset='digits'" in message


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    import keras

    monkeypatch.delenv("SUPPORT_OFFLINE", raising=False)
    monkeypatch.delenv("SUPPORT_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    calls = []

    def interrupted(fname, origin, cache_dir, cache_subdir):
        calls.append(origin)
        (tmp_path.joinpath(cache_dir, fname)).write_bytes(b"half a file")
        raise ConnectionError("connection reset")

    monkeypatch.setattr(keras.utils, "get_file", interrupted)
    with pytest.raises(data.DataError, match="connection reset"):
        data.load("mnist", "test")
    assert len(calls) == len(data.MIRRORS["mnist"])
    cache = tmp_path / "keras" / "datasets" / "mnist"
    assert list(cache.iterdir()) == []


def test_download_with_wrong_bytes_is_discarded_and_right_bytes_kept(tmp_path, monkeypatch):
    import keras

    monkeypatch.delenv("SUPPORT_OFFLINE", raising=False)
    monkeypatch.delenv("SUPPORT_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    labels = np.arange(10) % 10

    def fake(fname, origin, cache_dir, cache_subdir):
        path = tmp_path.joinpath(cache_dir, fname)
        write_idx(path, labels)
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake)
    with pytest.raises(data.DataError, match="wrong sha256"):
        data.locate("mnist", "t10k-labels-idx1-ubyte.gz")
    assert list((tmp_path / "keras" / "datasets" / "mnist").iterdir()) == []
    # with the published hash of these bytes, the file is moved into the cache
    write_idx(tmp_path / "probe.gz", labels)
    digest = data.sha256_of(tmp_path / "probe.gz")
    monkeypatch.setitem(data.SHA256["mnist"], "t10k-labels-idx1-ubyte.gz", digest)
    path = data.locate("mnist", "t10k-labels-idx1-ubyte.gz")
    assert path == tmp_path / "keras" / "datasets" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert [p.name for p in path.parent.iterdir()] == ["t10k-labels-idx1-ubyte.gz"]


# --------------------------------------------------------------------------- binarization, tf.data


def test_static_binarization():
    x, _ = data.load("digits", "train")
    b = data.binarize(x, seed=1)
    assert set(np.unique(b)) == {0.0, 1.0}
    assert b.mean() == pytest.approx(x.mean(), abs=0.01)
    assert np.array_equal(b, data.binarize(x, seed=1))
    assert not np.array_equal(b, data.binarize(x, seed=2))
    assert np.all(b[x == 0] == 0) and np.all(b[x == 1] == 1)


def test_dataset_batches_and_dynamic_binarization():
    x, y = data.load("digits", "train")
    ds = data.dataset(x, y, batch_size=100, seed=0, binarization="dynamic")
    first = [xb.numpy() for xb, _ in ds]
    second = [xb.numpy() for xb, _ in ds]
    assert [len(b) for b in first] == [100] * 14 + [37]
    assert set(np.unique(first[0])) == {0.0, 1.0}
    assert not np.array_equal(first[0], second[0])  # fresh draws (and order) every epoch
    whole = np.concatenate(first)
    assert whole.mean() == pytest.approx(x.mean(), abs=0.01)
    plain = np.concatenate([xb.numpy() for xb in data.dataset(x, shuffle=False, batch_size=500)])
    np.testing.assert_array_equal(plain, x)
    with pytest.raises(ValueError, match="binarization='soft'"):
        data.dataset(x, binarization="soft")


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_corruption_for_denoising(noise):
    x, _ = data.load("digits", "test")
    noisy = data.corrupt(x, noise, 0.3, seed=1)
    assert noisy.shape == x.shape and noisy.min() >= 0 and noisy.max() <= 1
    if noise == "masking":
        kept = noisy[x > 0] / x[x > 0]
        assert set(np.unique(kept)) <= {0.0, 1.0} and abs((kept == 0).mean() - 0.3) < 0.02
    else:
        assert 0.05 < np.mean((noisy - x) ** 2) < 0.09  # clipping shrinks 0.3^2 = 0.09
    noisy_batch, clean_batch = next(iter(data.noisy_pairs(x, noise=noise, level=0.3, batch_size=50)))
    assert noisy_batch.shape == clean_batch.shape == (50, 8, 8, 1)
    assert not np.array_equal(noisy_batch.numpy(), clean_batch.numpy())
    with pytest.raises(ValueError, match="noise='salt'"):
        data.corrupt(x, "salt")
