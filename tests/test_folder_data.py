"""folder:DIR datasets: one sub-folder of PNG/JPEG files per class, resized to INPUT as
predict does, held out or split train/val, streamed past a memory limit, names kept."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT
from netdsl.core.errors import NetdslError
from netdsl.data.loader import data_facts, load_dataset, load_folder

Image = pytest.importorskip("PIL.Image")

CLASSES = ("bars", "blob", "columns")   # sorted: labels 0, 1, 2


def _pattern(kind: str, side: int, rng) -> np.ndarray:
    """A side×side RGB uint8 image whose class a small CNN can tell: horizontal bars,
    vertical bars or a bright centre, with noise and a random colour."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    if kind == "bars":
        grey = (np.sin(yy * 6 * np.pi) > 0).astype(float)
    elif kind == "columns":
        grey = (np.sin(xx * 6 * np.pi) > 0).astype(float)
    else:
        grey = np.exp(-((yy - .5) ** 2 + (xx - .5) ** 2) * 12)
    colour = rng.uniform(0.5, 1.0, 3)
    img = grey[..., None] * colour + rng.normal(0, 0.08, (side, side, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_folder(root, per_class=(12, 12, 12), sizes=(20, 28), seed=0, fmt="png"):
    """Class folders of PNGs (JPEGs for fmt='jpg') of random sizes in ``sizes``."""
    rng = np.random.default_rng(seed)
    for kind, count in zip(CLASSES, per_class):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            side = int(rng.integers(sizes[0], sizes[1] + 1))
            Image.fromarray(_pattern(kind, side, rng)).save(root / kind / f"{i:03d}.{fmt}")
    return root


def test_classes_are_the_sorted_folders_and_the_holdout_mixes_them(tmp_path):
    make_folder(tmp_path / "d", per_class=(10, 5, 15), sizes=(16, 16))
    facts = data_facts(f"folder:{tmp_path / 'd'}")
    assert facts.num_classes == 3 and facts.single_split == 30
    assert facts.native_shape == (16, 16, 3)
    ds = load_dataset(f"folder:{tmp_path / 'd'}", input_shape=(16, 16, 3))
    assert ds.class_names == CLASSES and ds.test_name == "held-out last 6"
    # 20% of each class held out, not the last class only
    assert np.bincount(ds.y_test, minlength=3).tolist() == [2, 1, 3]
    assert np.bincount(ds.y_train, minlength=3).tolist() == [8, 4, 12]


def test_pixels_match_the_files_normalised_with_the_train_split(tmp_path):
    """Images already at INPUT's size: the array is the PNG bytes / 255 standardised with
    the train split's per-channel mean and std, computed here with plain NumPy."""
    make_folder(tmp_path / "d", per_class=(4, 4, 4), sizes=(12, 12))
    ds = load_dataset(f"folder:{tmp_path / 'd'}", input_shape=(12, 12, 3), holdout=3)
    order = sorted(((i + .5) / 4, c, i) for c in range(3) for i in range(4))
    raw = np.stack([np.asarray(Image.open(tmp_path / "d" / CLASSES[c] / f"{i:03d}.png"),
                               np.float64) / 255 for _, c, i in order])
    train = raw[:9]
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.x_train, (train - mean) / std, atol=1e-4)
    np.testing.assert_allclose(ds.x_test, (raw[9:] - mean) / std, atol=1e-4)
    assert ds.y_train.tolist() == [c for _, c, _ in order][:9]


def test_grey_network_train_val_split_and_resizing(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=(3, 3, 3))
    make_folder(tmp_path / "d" / "val", per_class=(1, 2, 0), seed=1)
    ds = load_dataset(f"folder:{tmp_path / 'd'}", input_shape=(10, 10, 1))
    assert ds.test_name == "val split" and len(ds.x_train) == 9 and len(ds.x_test) == 3
    assert ds.x_train.shape == (9, 10, 10, 1) and ds.y_test.tolist() == [1, 0, 1]   # keys .25, .5, .75
    assert ds.native_shape == (10, 10, 1)
    # a flat input: the same images flattened
    flat = load_dataset(f"folder:{tmp_path / 'd'}", input_shape=(100,))
    np.testing.assert_allclose(flat.x_train, ds.x_train.reshape(9, -1), atol=1e-5)


def test_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(NetdslError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    make_folder(tmp_path / "one", per_class=(3, 0, 0))
    with pytest.raises(NetdslError, match="at least 2"):
        data_facts(f"folder:{tmp_path / 'one'}")
    make_folder(tmp_path / "s" / "train", per_class=(2, 2, 0))
    make_folder(tmp_path / "s" / "val", per_class=(0, 0, 2))
    with pytest.raises(NetdslError, match="val/ has classes that train/ has not: columns"):
        load_dataset(f"folder:{tmp_path / 's'}")


def test_a_folder_larger_than_the_memory_limit_streams(tmp_path):
    """150 images at 64×64×3 are 7.4 MB decoded; with a 2 MB limit the set is not loaded:
    loading and one epoch of batches of 16 (1.5 MB each) stay below 2 MB + one batch, where
    loading it whole needs the full size (measured the same way, so the check can fail)."""
    make_folder(tmp_path / "d", per_class=(50, 50, 50), sizes=(40, 72))
    spec, shape, whole = tmp_path / "d", (64, 64, 3), 150 * 64 * 64 * 3 * 4
    limit, batch = 2 * 2 ** 20, 16 * 64 * 64 * 3 * 4

    def peak(limit):
        tracemalloc.start()
        try:
            ds = load_folder(spec, shape, -1, limit=limit)
            order = np.random.default_rng(0).permutation(len(ds.x_train))
            sums = np.zeros(3)
            for start in range(0, len(order), 16):     # as the training loop indexes it
                sums += ds.x_train[order[start:start + 16]].sum(axis=(0, 1, 2))
            return tracemalloc.get_traced_memory()[1], ds, sums
        finally:
            tracemalloc.stop()

    streamed_peak, streamed, sums = peak(limit)
    assert not isinstance(streamed.x_train, np.ndarray)
    assert streamed_peak < limit + batch, f"peak {streamed_peak:,} B"
    loaded_peak, loaded, loaded_sums = peak(None)
    assert isinstance(loaded.x_train, np.ndarray) and loaded_peak >= whole
    # the same normalised pixels either way
    np.testing.assert_allclose(streamed.x_test[:], loaded.x_test, atol=1e-4)
    np.testing.assert_allclose(sums, loaded_sums, rtol=1e-4, atol=1e-2)


def _netdsl(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "netdsl", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["", "100K"], ids=["loaded", "streamed"])
def test_a_folder_of_pngs_trains_and_predict_and_eval_print_class_names(tmp_path, memory):
    make_folder(tmp_path / "shapes", per_class=(30, 30, 30))
    net = tmp_path / "tiny.net"
    net.write_text("net tiny\nINPUT(16x16x3) -> CONV(8, 3) -> RELU -> POOL -> FC\n"
                   "train {\n  optimizer = adam\n  lr = 0.01\n  epochs = 6\n"
                   "  batch_size = 16\n}\n")
    env = {"NETDSL_DATA_MEMORY": memory} if memory else {}
    r = _netdsl("run", net, "--data", f"folder:{tmp_path / 'shapes'}", "--out",
                tmp_path / "run", "--quiet", "--no-plots", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "72 train / 18 held-out last 18" in r.stdout
    acc = float(r.stdout.split("accuracy:")[1].split("%")[0])
    assert acc > 60, r.stdout        # chance is 33%
    probe = tmp_path / "probe.png"
    Image.fromarray(_pattern("columns", 24, np.random.default_rng(9))).save(probe)
    ck = tmp_path / "run" / "checkpoint.npz"
    r = _netdsl("predict", net, "--weights", ck, probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [part.split(" (")[0] for part in r.stdout.strip().split(": ", 1)[1].split(", ")]
    assert sorted(names) == sorted(CLASSES), r.stdout
    r = _netdsl("eval", net, "--weights", ck, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "held-out last 18" in r.stdout and all(c in r.stdout for c in CLASSES)
