"""Datasets: readers (IDX, CIFAR pickles, npz, digits), splits, fitting, normalising, augmenting.

Expected values are written out by hand or rebuilt with a different method (struct-packed
files, np.roll, closed-form interpolation) rather than taken from the code under test.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.data.augment import augment_batch, crop_at
from netdsl.data.loader import (convert_channels, dataset_info, fit_to_shape, load_dataset,
                               normalise, read_splits, resize_bilinear, should_pad)

MNIST10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist10k"


# ---------------------------------------------------------------------------------------------
# Synthetic IDX files, packed by hand with struct.

def idx_bytes(array: np.ndarray, magic: int, count: int | None = None) -> bytes:
    dims = list(array.shape)
    if count is not None:
        dims[0] = count  # lie in the header
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def mnist_images(n: int, h: int = 6, w: int = 5, start: int = 0) -> np.ndarray:
    # Pixel (i, r, c) = 10*i + r + c + start: every image differs, values fit in uint8.
    i, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return (10 * i + r + c + start).astype(np.uint8)


def make_mnist(directory: Path, splits=("train", "t10k"), gz=True, n=(12, 4)) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for split, count in zip(splits, n):
        x = mnist_images(count, start=100 if split == "t10k" else 0)
        y = (np.arange(count) * 3 % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write(directory / f"{split}-images-idx3-ubyte{suffix}", idx_bytes(x, 0x803))
        write(directory / f"{split}-labels-idx1-ubyte{suffix}", idx_bytes(y, 0x801))
        made[split] = (x, y)
    return made


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_train_and_test_splits_scaled_to_unit_range(tmp_path, gz):
    made = make_mnist(tmp_path, gz=gz)
    splits = read_splits(f"mnist:{tmp_path}")
    np.testing.assert_allclose(splits.train[0][..., 0], made["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(splits.test[1], made["t10k"][1])
    assert splits.native_shape == (6, 5, 1) and splits.num_classes == 10

    ds = load_dataset(f"mnist:{tmp_path}", holdout=3)   # holdout ignored: there is a test split
    assert ds.test_name == "test split"
    assert ds.x_train.shape == (12, 6, 5, 1) and ds.x_test.shape == (4, 6, 5, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, [0, 3, 6, 9, 2, 5, 8, 1, 4, 7, 0, 3])
    # Normalised with the train pixels' own statistics, recomputed here with np.std.
    train01 = made["train"][0] / 255.0
    expected_test = (made["t10k"][0] / 255.0 - train01.mean()) / train01.std()
    np.testing.assert_allclose(ds.x_test[..., 0], expected_test, rtol=1e-4, atol=1e-4)
    assert dataset_info(f"mnist:{tmp_path}") == ((6, 5, 1), 10)


def test_mnist_single_split_dot_spelling_keeps_last_examples(tmp_path):
    x = mnist_images(10)
    y = np.array([5, 1, 4, 9, 2, 6, 5, 3, 5, 8], dtype=np.uint8)
    write(tmp_path / "t10k-images.idx3-ubyte", idx_bytes(x, 0x803))
    write(tmp_path / "t10k-labels.idx1-ubyte.gz", idx_bytes(y, 0x801))
    ds = load_dataset(f"mnist:{tmp_path}", holdout=3)
    assert ds.test_name == "held-out last 3"
    np.testing.assert_array_equal(ds.y_test, [3, 5, 8])
    np.testing.assert_array_equal(ds.y_train, y[:7])
    assert load_dataset(f"mnist:{tmp_path}").x_test.shape[0] == 2   # default 20% of 10


def test_idx_truncated_names_file_and_arithmetic(tmp_path):
    make_mnist(tmp_path, gz=False)
    x = mnist_images(12)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x, 0x803)[:-7])
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path}")
    msg = err.value.message
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg
    assert "12 images of 6×5 = 360 bytes" in msg and "file has 353" in msg


def test_idx_bad_magic_names_file(tmp_path):
    make_mnist(tmp_path, gz=True)
    labels = np.zeros(4, np.uint8)
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(labels, 0x801))
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path}")
    msg = err.value.message
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert "expected 0x00000803 for images, found 0x00000801" in msg


def test_idx_count_mismatch_names_both_files(tmp_path):
    make_mnist(tmp_path, gz=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8), 0x801))
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path}")
    msg = err.value.message
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "4 images" in msg and "5 labels" in msg


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_corrupt_gzip(tmp_path, damage):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(b"not gzip at all" if damage == "garbage" else blob[: len(blob) // 2])
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path}")
    assert "train-labels-idx1-ubyte.gz" in err.value.message
    assert "gzip" in err.value.message


def test_idx_label_out_of_range_empty_and_missing_files(tmp_path):
    make_mnist(tmp_path, splits=("t10k",), n=(4,), gz=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, 2, 12, 3], np.uint8), 0x801))
    with pytest.raises(NetdslError, match="t10k-labels-idx1-ubyte.*out of range.*12"):
        load_dataset(f"mnist:{tmp_path}")

    empty = np.zeros((0, 6, 5), np.uint8)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(empty, 0x803))
    with pytest.raises(NetdslError, match="t10k-images-idx3-ubyte.*empty"):
        load_dataset(f"mnist:{tmp_path}")

    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path}")
    assert "t10k-labels-idx1-ubyte.gz" in err.value.render()   # lists what was looked for
    with pytest.raises(NetdslError, match="does not exist"):
        dataset_info(f"mnist:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetdslError) as err:
        load_dataset(f"mnist:{tmp_path / 'empty'}")
    assert "no IDX files" in err.value.message
    assert "train-images-idx3-ubyte" in err.value.render()


def test_unknown_kind_suggests_a_known_one():
    with pytest.raises(NetdslError) as err:
        load_dataset("cifar:some/dir")
    assert "cifar10" in err.value.render() and "npz" in err.value.render()
    assert err.value.hint == "did you mean 'cifar10'?"


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickles.

def cifar_batch(n: int, first_label: int = 0, bytes_keys: bool = True) -> dict:
    data = np.zeros((n, 3072), np.uint8)
    for i in range(n):  # planes R, G, B of 1024 bytes each: image i is (10+i, 20+i, 30+i)
        data[i, :1024], data[i, 1024:2048], data[i, 2048:] = 10 + i, 20 + i, 30 + i
    data[0, 5 * 32 + 7] = 200          # R of pixel (row 5, col 7) in image 0
    labels = [(first_label + i) % 10 for i in range(n)]
    return {b"data": data, b"labels": labels} if bytes_keys else {"data": data, "labels": labels}


def test_cifar_batches_in_subfolder(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "data_batch_1").write_bytes(pickle.dumps(cifar_batch(3), protocol=2))
    (base / "data_batch_2").write_bytes(pickle.dumps(cifar_batch(2, 5, bytes_keys=False)))
    (base / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, 7), protocol=5))
    splits = read_splits(f"cifar10:{tmp_path}")
    x, y = splits.train
    assert x.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(x[0, 5, 7], np.array([200, 20, 30]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[4, 31, 31], np.array([11, 21, 31]) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [0, 1, 2, 5, 6])
    ds = load_dataset(f"cifar10:{tmp_path}", input_shape=(32, 32, 1))
    assert ds.test_name == "test split" and ds.x_test.shape == (2, 32, 32, 1)
    assert dataset_info(f"cifar10:{tmp_path}") == ((32, 32, 3), 10)


def test_cifar_single_batch_uses_holdout_and_bad_pickles_fail(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(cifar_batch(5)))
    ds = load_dataset(f"cifar10:{tmp_path}", holdout=2)
    assert ds.test_name == "held-out last 2" and list(ds.y_test) == [3, 4]

    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(NetdslError, match="data_batch_1.*bad pickle"):
        load_dataset(f"cifar10:{tmp_path}")

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(NetdslError, match="bad pickle"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not sentinel.exists()      # the unpickler refused to call open()

    (tmp_path / "empty").mkdir()
    with pytest.raises(NetdslError) as err:              # lists the batch names it wanted
        load_dataset(f"cifar10:{tmp_path / 'empty'}")
    assert "data_batch_1" in err.value.render() and "test_batch" in err.value.render()


# ---------------------------------------------------------------------------------------------
# npz in its three layouts.

def npz_images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(5, 4, 6, 3)).astype(np.uint8)   # NHWC, H=4, W=6, C=3


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts(tmp_path, layout):
    nhwc = npz_images()
    if layout == "nhw":
        nhwc = nhwc[..., :1]
    stored = {"nhwc": nhwc, "nchw": nhwc.transpose(0, 3, 1, 2), "nhw": nhwc[..., 0]}[layout]
    y = np.array([0, 4, 1, 1, 2])
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    splits = read_splits(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_allclose(splits.train[0], nhwc / 255.0, rtol=1e-6)
    assert splits.native_shape == nhwc.shape[1:] and splits.num_classes == 5
    assert dataset_info(f"npz:{tmp_path / 'd.npz'}") == (nhwc.shape[1:], 5)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", holdout=1)
    assert ds.test_name == "held-out last 1" and ds.x_train.shape == (4, *nhwc.shape[1:])


def test_npz_ambiguous_three_channels_stays_channels_last(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 5, 3), np.uint8), y=np.zeros(4, int))
    assert dataset_info(f"npz:{tmp_path / 'd.npz'}") == ((3, 5, 3), 1)


@pytest.mark.parametrize("arrays, pattern", [
    ({"x": np.zeros((3, 4, 4))}, "missing array y"),
    ({"images": np.zeros((3, 4, 4)), "y": np.zeros(3, int)}, "missing array x"),
    ({"x": np.zeros((3, 4, 4)), "y": np.array([0, -1, 2])}, "negative"),
    ({"x": np.zeros((3, 4, 4)), "y": np.array([0, 1])}, "count mismatch"),
    ({"x": np.zeros((3, 4)), "y": np.array([0, 1, 0])}, "N×H×W"),
    ({"x": np.zeros((0, 4, 4)), "y": np.zeros(0, int)}, "empty"),
])
def test_npz_errors(tmp_path, arrays, pattern):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(NetdslError) as err:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    assert "bad.npz" in err.value.message and pattern in err.value.message


# ---------------------------------------------------------------------------------------------
# digits, holdout, fitting to the input shape, normalisation.

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_default_holdout_and_normalisation(digits):
    assert digits.x_train.shape == (1438, 8, 8, 1) and digits.x_test.shape == (359, 8, 8, 1)
    assert digits.test_name == "held-out last 359" and digits.num_classes == 10
    assert abs(float(digits.x_train.mean(dtype=np.float64))) < 1e-5
    assert abs(float(digits.x_train.std(dtype=np.float64)) - 1) < 1e-4
    assert sorted(set(digits.y_train.tolist())) == list(range(10))


@pytest.mark.parametrize("shape", [(32, 32, 1), (8, 8, 1), (16, 16, 3)])
def test_digits_input_shapes(shape):
    ds = load_dataset("digits", input_shape=shape)
    assert ds.x_train.shape == (1438, *shape) and ds.x_test.shape == (359, *shape)
    assert ds.native_shape == (8, 8, 1) and ds.input_shape == shape
    per_channel = ds.x_train.reshape(-1, shape[2])
    # float64: a float32 column reduction over 370k values drifts by ~1e-3 by itself.
    np.testing.assert_allclose(per_channel.mean(0, dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(0, dtype=np.float64), 1, atol=1e-4)
    if shape[2] == 3:   # grey repeated into RGB: the three channels are identical
        np.testing.assert_array_equal(ds.x_train[..., 0], ds.x_train[..., 2])


@pytest.mark.parametrize("holdout", [0, 1797, 5000, -3])
def test_bad_holdout_explains_count(holdout):
    with pytest.raises(NetdslError) as err:
        load_dataset("digits", holdout=holdout)
    assert "1797" in err.value.message and "1796" in err.value.message


def test_pad_or_resize_decision():
    assert should_pad((28, 28), (32, 32))          # LeNet's MNIST setup
    assert should_pad((28, 28), (35, 35))          # 35 = 1.25 × 28, the limit
    assert not should_pad((28, 28), (36, 36))
    assert not should_pad((8, 8), (32, 32))
    assert not should_pad((28, 28), (24, 24))      # shrinking
    assert not should_pad((28, 28), (32, 20))


def test_padding_is_centred_with_zeros():
    x = np.ones((2, 28, 28, 1), np.float32)
    out = fit_to_shape(x, (31, 32, 1))
    assert out.shape == (2, 31, 32, 1)
    # 3 extra rows: 1 on top, 2 at the bottom; 4 extra columns: 2 each side.
    np.testing.assert_array_equal(out[:, 1:29, 2:30], 1)
    assert out.sum() == 2 * 28 * 28


def test_bilinear_resize_of_a_ramp():
    ramp = np.array([0, 1, 2, 3], np.float32).reshape(1, 1, 4, 1)
    # Half-pixel centres: output column i samples position i/2 − 0.25, clamped to [0, 3].
    up = resize_bilinear(ramp, 1, 8)[0, 0, :, 0]
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    down = resize_bilinear(ramp, 1, 2)[0, 0, :, 0]
    np.testing.assert_allclose(down, [0.5, 2.5], atol=1e-6)   # positions 0.5 and 2.5


def test_bilinear_resize_is_exact_on_a_plane():
    # f(r, c) = r + 10c is linear, so bilinear interpolation reproduces it exactly.
    r, c = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    img = (r + 10 * c).astype(np.float32)[None, ..., None].repeat(3, axis=0)
    out = resize_bilinear(img, 6, 3)
    pr = np.clip((np.arange(6) + 0.5) * 4 / 6 - 0.5, 0, 3)
    pc = np.clip((np.arange(3) + 0.5) * 5 / 3 - 0.5, 0, 4)
    expected = pr[:, None] + 10 * pc[None, :]
    for i in range(3):
        np.testing.assert_allclose(out[i, ..., 0], expected, atol=1e-4)


def test_channel_conversion():
    rgb = np.array([[1, 0, 0], [0.2, 0.4, 0.6]], np.float32).reshape(2, 1, 1, 3)
    grey = convert_channels(rgb, 1)[:, 0, 0, 0]
    np.testing.assert_allclose(grey, [0.299, 0.363], atol=1e-6)   # 0.0598+0.2348+0.0684
    np.testing.assert_array_equal(convert_channels(rgb[..., :1], 3)[0, 0, 0], [1, 1, 1])
    with pytest.raises(NetdslError, match="2-channel"):
        convert_channels(np.zeros((1, 2, 2, 2), np.float32), 3)


def test_normalise_uses_train_statistics_only():
    train = np.array([0, 2], np.float32).reshape(2, 1, 1, 1)      # mean 1, std 1
    test = np.array([4, 1], np.float32).reshape(2, 1, 1, 1)
    tr, te = normalise(train, test)
    np.testing.assert_allclose(tr.ravel(), [-1, 1])
    np.testing.assert_allclose(te.ravel(), [3, 0])
    assert train[1, 0, 0, 0] == 2                                  # inputs untouched


# ---------------------------------------------------------------------------------------------
# Augmentation.

def shifted(img: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """What a crop at padded offset (dy, dx) shows: the image rolled by (pad−dy, pad−dx) with
    the wrapped-around rows and columns blanked."""
    sr, sc = pad - dy, pad - dx
    out = np.roll(img, (sr, sc), axis=(0, 1))
    if sr > 0:
        out[:sr] = 0
    elif sr < 0:
        out[sr:] = 0
    if sc > 0:
        out[:, :sc] = 0
    elif sc < 0:
        out[:, sc:] = 0
    return out


def test_crop_at_known_offsets_matches_roll():
    x = np.arange(1, 2 * 8 * 8 * 2 + 1, dtype=np.float32).reshape(2, 8, 8, 2)
    out = crop_at(x, np.array([0, 1]), np.array([2, 1]), 1, 1)
    np.testing.assert_array_equal(out[0], shifted(x[0], 0, 2, 1))
    np.testing.assert_array_equal(out[1], x[1])                    # (pad, pad) = no shift


def test_augment_crop_shifts_content_within_the_padding():
    x = np.arange(1, 64 * 16 * 16 + 1, dtype=np.float32).reshape(64, 16, 16, 1)
    before = x.copy()
    out = augment_batch(x, "crop", np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert out.shape == x.shape
    pad = 2                                                          # max(1, 16 // 8)
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if np.array_equal(out[i], shifted(x[i], dy, dx, pad))]
        assert len(hits) == 1, f"image {i} is no padded crop of its input"
        offsets.add(hits[0])
    assert len(offsets) > 5                                          # the offsets really vary


def test_augment_flip_mirrors_about_half():
    x = np.random.default_rng(3).random((64, 5, 7, 3)).astype(np.float32)
    out = augment_batch(x, "flip", np.random.default_rng(0))
    flipped = [np.array_equal(out[i], x[i, :, ::-1]) for i in range(64)]
    kept = [np.array_equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("mode", ["none", "crop+flip", "flip+crop"])
def test_augment_modes_keep_shape_and_copy(mode):
    x = np.ones((4, 8, 8, 3), np.float32)
    out = augment_batch(x, mode, np.random.default_rng(0))
    assert out.shape == x.shape and out is not x
    if mode == "none":
        np.testing.assert_array_equal(out, x)


def test_augment_unknown_mode():
    with pytest.raises(NetdslError) as err:
        augment_batch(np.zeros((1, 4, 4, 1)), "flp", np.random.default_rng(0))
    assert err.value.hint == "did you mean 'flip'?"


# ---------------------------------------------------------------------------------------------
# The real MNIST test set, when the shared data folder is there.

@pytest.mark.skipif(not MNIST10K.is_dir(), reason="shared MNIST t10k files not present")
def test_real_mnist_t10k_holdout():
    ds = load_dataset(f"mnist:{MNIST10K}", input_shape=(32, 32, 1), holdout=2000)
    assert ds.x_train.shape == (8000, 32, 32, 1) and ds.x_test.shape == (2000, 32, 32, 1)
    assert ds.test_name == "held-out last 2000" and ds.native_shape == (28, 28, 1)
    assert np.bincount(ds.y_train, minlength=10).min() > 500      # all ten digits present
    assert ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.float32
