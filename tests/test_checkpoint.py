"""Checkpoints (round trip, atomicity, damaged files), atomic JSON and the epoch progress bar."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.train import checkpoint as ckpt_module
from netdsl.train.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic
from netdsl.train.optim import Adam, SGD
from netdsl.train.progress import EpochBar

SOURCE = "net tiny(N=2) {\n  conv(8, k=3) -> relu  # ünïcode\n}\n"


def make_params():
    rng = np.random.default_rng(7)
    return {"inc3a/conv1": {"weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                            "bias": np.arange(4, dtype=np.float32)},
            "stage2/block1/bn": {"gamma": np.ones(4, np.float32),
                                 "running_var": np.full(4, 2.5, np.float32)},
            "fc": {"weight": rng.normal(size=(10, 4)), "bias": np.zeros(10)}}


def make_grads(seed):
    rng = np.random.default_rng(seed)
    return {"inc3a/conv1": {"weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                            "bias": rng.normal(size=4).astype(np.float32)},
            "stage2/block1/bn": {"gamma": rng.normal(size=4).astype(np.float32)},
            "fc": {"weight": rng.normal(size=(10, 4)), "bias": rng.normal(size=10)}}


def save(path, params=None, optimizer_state=None, epoch=3, **extra):
    save_checkpoint(path, params=make_params() if params is None else params,
                    optimizer_state=optimizer_state or {}, epoch=epoch, step=epoch * 10,
                    metrics=extra.get("metrics", {"val_acc": 0.5}),
                    meta=extra.get("meta", {"source": SOURCE}))


def files_in(directory):
    return sorted(os.listdir(directory))


def test_round_trip_keeps_names_values_dtypes_and_bookkeeping(tmp_path):
    params = make_params()
    opt = SGD(0.1, momentum=0.9)
    opt.step(params, make_grads(1))
    rng_state = np.random.default_rng(3).bit_generator.state   # holds 128-bit integers
    meta = {"source": SOURCE, "bound_params": {"N": 2}, "train": {"lr": 0.1, "epochs": 5},
            "seed": 3, "rng_state": rng_state}
    metrics = {"train_loss": np.float32(0.25), "val_acc": 0.875, "history": [0.1, 0.2]}
    path = tmp_path / "run.npz"
    save_checkpoint(path, params=params, optimizer_state=opt.state_dict(), epoch=2, step=17,
                    metrics=metrics, meta=meta)
    loaded = load_checkpoint(path)

    assert loaded["epoch"] == 2 and loaded["step"] == 17
    assert loaded["meta"] == meta            # incl. the exact source text and the rng state
    assert loaded["metrics"] == {"train_loss": 0.25, "val_acc": 0.875, "history": [0.1, 0.2]}
    assert set(loaded["params"]) == {"inc3a/conv1", "stage2/block1/bn", "fc"}
    for node, node_params in params.items():
        assert set(loaded["params"][node]) == set(node_params)
        for name, value in node_params.items():
            got = loaded["params"][node][name]
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
    state = loaded["optimizer_state"]
    assert state["optimizer"] == "sgd"
    np.testing.assert_array_equal(state["momentum_buffer/stage2/block1/bn/gamma"],
                                  opt.state_dict()["momentum_buffer/stage2/block1/bn/gamma"])
    # The file is an ordinary, uncompressed npz with the documented key scheme.
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    assert "param/stage2/block1/bn/running_var.npy" in names
    assert "opt/momentum_buffer/inc3a/conv1/weight.npy" in names


def test_resume_from_checkpoint_continues_like_uninterrupted_run(tmp_path):
    grads = [make_grads(seed) for seed in range(4)]
    straight, opt = make_params(), Adam(0.01, weight_decay=1e-3)
    for g in grads:
        opt.step(straight, g)

    params, opt = make_params(), Adam(0.01, weight_decay=1e-3)
    for g in grads[:2]:
        opt.step(params, g)
    save(tmp_path / "c.npz", params=params, optimizer_state=opt.state_dict())
    loaded = load_checkpoint(tmp_path / "c.npz")
    resumed, opt = loaded["params"], Adam(0.01, weight_decay=1e-3)
    opt.load_state_dict(loaded["optimizer_state"])
    assert opt.t == 2
    for g in grads[2:]:
        opt.step(resumed, g)
    for node in straight:
        for name in straight[node]:
            np.testing.assert_array_equal(resumed[node][name], straight[node][name])


def test_overwrite_replaces_previous_checkpoint(tmp_path):
    path = tmp_path / "c.npz"
    save(path, epoch=1)
    save(path, epoch=2)
    assert load_checkpoint(path)["epoch"] == 2
    assert files_in(tmp_path) == ["c.npz"]


def failing_savez(file, *args, **kwargs):
    file.write(b"PK\x03\x04 half an archive")   # some bytes reach the temp file first
    raise OSError(28, "No space left on device")


def failing_replace(src, dst):
    raise OSError(18, "Invalid cross-device link")


@pytest.mark.parametrize("target, replacement", [(np, ("savez", failing_savez)),
                                                 (os, ("replace", failing_replace))])
def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch,
                                                                       target, replacement):
    path = tmp_path / "c.npz"
    save(path, epoch=1)
    before = path.read_bytes()
    monkeypatch.setattr(target, *replacement)
    with pytest.raises(NetdslError) as info:
        save(path, epoch=2)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert files_in(tmp_path) == ["c.npz"]


def test_interrupted_save_cleans_up_and_reraises(tmp_path, monkeypatch):
    def interrupted(file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "c.npz")
    assert files_in(tmp_path) == []


def test_save_into_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(NetdslError, match="nowhere"):
        save(tmp_path / "nowhere" / "c.npz")


def test_new_file_gets_ordinary_permissions(tmp_path):
    # NamedTemporaryFile makes 0600 files; a checkpoint should be like any file the user writes.
    umask = os.umask(0o022)
    try:
        save(tmp_path / "c.npz")
    finally:
        os.umask(umask)
    if os.name == "posix":
        assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644


def test_truncated_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.npz"
    save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetdslError) as info:
        load_checkpoint(path)
    assert str(path) in info.value.message


def test_damaged_member_is_a_user_error(tmp_path):
    path = tmp_path / "bad.npz"
    save(path)
    data = bytearray(path.read_bytes())
    start = data.find(b"\x93NUMPY")           # the first array's .npy header inside the zip
    data[start:start + 6] = b"garbag"
    path.write_bytes(bytes(data))
    with pytest.raises(NetdslError, match="bad.npz"):
        load_checkpoint(path)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("write", [
    lambda p: p.write_bytes(os.urandom(256)),
    lambda p: p.write_text("not a checkpoint at all\n"),
    lambda p: p.write_bytes(npy_bytes(np.zeros(3))),
    lambda p: np.savez(p, weights=np.zeros(3)),
    lambda p: np.savez(p, __netdsl__=np.array(json.dumps({"format": "something-else"}))),
])
def test_other_files_are_not_checkpoints(tmp_path, write):
    path = tmp_path / "other.npz"
    write(path)
    with pytest.raises(NetdslError) as info:
        load_checkpoint(path)
    assert str(path) in info.value.message


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(NetdslError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.npz"
    header = {"format": ckpt_module.FORMAT_TAG, "version": ckpt_module.FORMAT_VERSION + 1,
              "epoch": 0, "step": 0}
    np.savez(path, __netdsl__=np.array(json.dumps(header)))
    with pytest.raises(NetdslError, match="version"):
        load_checkpoint(path)


def test_write_json_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"acc": np.float64(0.5), "curve": np.arange(3), "name": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"acc": 0.5, "curve": [0, 1, 2],
                                                            "name": "ü"}
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(NetdslError, match="metrics.json"):
        write_json_atomic(path, {"acc": 1.0})
    monkeypatch.undo()
    assert json.loads(path.read_text(encoding="utf-8"))["acc"] == 0.5
    assert files_in(tmp_path) == ["metrics.json"]


# --- progress bar ---------------------------------------------------------------------------

def test_epoch_bar_writes_running_loss_and_accuracy():
    stream = io.StringIO()   # not a TTY, like CI
    bar = EpochBar(2, 5, total_examples=100, file=stream)
    bar.update(60, loss=1.0, acc=0.5)
    bar.update(40, loss=0.5, acc=1.0)
    # example-weighted: (60*1.0 + 40*0.5) / 100 and (30 + 40) / 100
    assert bar.mean_loss == pytest.approx(0.8)
    assert bar.accuracy == pytest.approx(0.7)
    assert bar.images_per_second > 0
    bar.close("val_acc=64.00%")
    out = stream.getvalue()
    last = out.replace("\r", "\n").strip().splitlines()[-1]
    assert "epoch 2/5" in last and "100/100" in last
    assert "loss=0.8000" in last and "acc=70.00%" in last and "val_acc=64.00%" in last
    assert "img/s" in last


def test_disabled_epoch_bar_writes_nothing_but_still_counts():
    stream = io.StringIO()
    bar = EpochBar(1, 1, total_examples=10, disable=True, file=stream)
    bar.update(10, loss=2.0, acc=0.3)
    bar.close("done")
    assert stream.getvalue() == ""
    assert bar.mean_loss == pytest.approx(2.0) and bar.accuracy == pytest.approx(0.3)


def test_members_netdsl_does_not_read_are_never_inflated(tmp_path):
    """An extra member (here 512 MB of zeros, deflated to ~0.5 MB) added to a checkpoint is
    not decompressed by loading it: it was inflated whole before (4 GiB in 42 s)."""
    import tracemalloc
    import zipfile
    path = tmp_path / "ck.npz"
    save_checkpoint(path, params={"fc": {"weight": np.ones((3, 2), np.float32)}},
                    optimizer_state={}, epoch=1, step=2, metrics={}, meta={})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            f.write(np.lib.format.magic(1, 0))
            header = {"descr": "|u1", "fortran_order": False, "shape": (512 << 20,)}
            np.lib.format.write_array_header_1_0(f, header)
            zeros = bytes(1 << 20)
            for _ in range(512):
                f.write(zeros)
    tracemalloc.start()
    try:
        ck = load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ck["params"]["fc"]["weight"].shape == (3, 2)
    assert peak < 16 << 20, peak
