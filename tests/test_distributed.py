"""Data-parallel training over MPI (docs/distributed.md): N ranks compute what one process
computes. The pure parts (shares, sliced random draws, buckets) are checked without MPI; the
rest runs `mpiexec -n 2` and skips cleanly where mpi4py or mpiexec is missing."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.data.augment import augment_batch
from netdsl.runtime.executor import Executor
from netdsl.train.allreduce import plan_buckets
from netdsl.train.distributed import SlicedRng, share
from netdsl.cli.workers import strip_workers

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import mpi_train_worker as worker  # noqa: E402


def test_shares_cover_the_batch_in_order():
    for n in (1, 7, 16, 33):
        for size in (1, 2, 3, 5):
            parts = share(n, size)
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_augmenting_a_part_equals_that_part_of_the_whole_batch():
    x = np.random.default_rng(1).standard_normal((9, 8, 8, 2)).astype(np.float32)
    whole = augment_batch(x, "affine+crop+flip", np.random.default_rng(5))
    for lo, hi in share(9, 2):
        part = augment_batch(x[lo:hi], "affine+crop+flip", np.random.default_rng(5), part=(lo, 9))
        np.testing.assert_array_equal(part, whole[lo:hi])


def test_sliced_rng_gives_each_row_its_whole_batch_mask():
    whole = np.random.default_rng(7).random((6, 4, 3), dtype=np.float32)
    rows = SlicedRng(np.random.default_rng(7), 6, 2, 5).random((3, 4, 3), dtype=np.float32)
    np.testing.assert_array_equal(rows, whole[2:5])


def test_buckets_hold_every_trainable_tensor_once_in_backward_order():
    g = compile_text(worker.NETS["nobn"], num_classes=3).graph
    ex = Executor(g, seed=0)
    for mb in (1e-4, 1e-3, 25.0):
        buckets = plan_buckets(ex, mb)
        keys = [(n, k) for b in buckets for n, k, *_ in b.entries]
        assert sorted(keys) == sorted(ex.trainable()) and len(set(keys)) == len(keys)
        order = [st.node.name for st in reversed(ex.plan)]
        assert [order.index(n) for n, _ in keys] == sorted(order.index(n) for n, _ in keys)
        for i, b in enumerate(buckets[:-1]):   # each but the last reaches the size
            assert b.buf.nbytes >= min(mb, 1.0 if i == 0 else mb) * 1e6
    assert len(plan_buckets(ex, 25.0)) == 1 and len(plan_buckets(ex, 1e-4)) > 2


def test_strip_workers():
    assert strip_workers(["run", "a.net", "--workers", "2", "--quiet"]) == ["run", "a.net",
                                                                           "--quiet"]
    assert strip_workers(["sweep", "--workers=3", "x"]) == ["sweep", "x"]


def test_without_mpi_workers_and_ranks_are_refused_clearly(monkeypatch):
    from netdsl.cli import workers
    from netdsl.core.errors import NetdslError
    from netdsl.train import distributed
    monkeypatch.setattr(workers.shutil, "which", lambda *a, **k: None)
    with pytest.raises(NetdslError, match="--workers needs MPI"):
        workers.spawn(["run", "x.net", "--workers", "2"], 2)
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # import mpi4py fails
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(NetdslError, match="mpi4py is not installed"):
        distributed.world()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert distributed.world() is None
    monkeypatch.delenv("PMI_SIZE")
    assert not distributed.launched_by_mpi({}) and distributed.world() is None


# -- under mpiexec --------------------------------------------------------------------------
def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("no mpiexec")
    return exe


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"):
        env.pop(key, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nobn", "bn"])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_two_ranks_equal_one_process(tmp_path, kind, dtype, rtol):
    """20 steps with dropout, augmentation, weight decay and an uneven last batch (7 = 4 + 3),
    without batch norm or with sync_bn: the parameters (running statistics included) and the
    metrics history of 2 ranks are those of one process. Relative to the largest parameter:
    the bias of a conv before batch norm has gradient 0 and holds only rounding noise."""
    # Both in fresh processes with the same environment: this one's thread limits, set by
    # other tests, stay out of it.
    run = [sys.executable, str(HERE / "mpi_train_worker.py"), kind, dtype]
    env = dict(_env(), OMP_NUM_THREADS="1")
    subprocess.run([_mpiexec(), "-n", "2", *run, str(tmp_path / "ranks.npz"), "--sync-bn"],
                   check=True, env=env, timeout=300)
    subprocess.run([*run, str(tmp_path / "single.npz")], check=True, env=env, timeout=300)
    ranks, ref = np.load(tmp_path / "ranks.npz"), np.load(tmp_path / "single.npz")
    assert int(ranks["step"]) == int(ref["step"]) == 20
    assert set(ranks.files) == set(ref.files)
    scale = max(np.abs(ref[k]).max() for k in ref.files if k.startswith("p/"))
    for key in ref.files:
        if key.startswith("p/"):
            assert np.abs(ranks[key] - ref[key]).max() <= rtol * scale, key
    for key in ("h/train_acc", "h/test_acc"):
        np.testing.assert_array_equal(ranks[key], ref[key])
    np.testing.assert_allclose(ranks["h/loss"], ref["h/loss"], rtol=rtol)


TINY = """net tiny
INPUT(8x8x1) -> CONV(8, 3) -> RELU -> POOL -> FC(32) -> RELU -> FC
train {
  batch_size = 32
  epochs = 400
}
"""


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "netdsl", "run", *args, "--quiet",
                             "--no-plots"], env=_env(), cwd=ROOT, **kw)


def _rank_pid(root: int, rank: int) -> int:
    """The process of MPI rank ``rank`` among ``root``'s descendants (by its PMI_RANK)."""
    children: dict = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except OSError:
            pass
    todo, found = [root], []
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    for p in found:
        try:
            env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env:
            return p
    raise AssertionError(f"no rank {rank} under {root}")


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.1)
    time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP],
                         ids=["SIGTERM", "SIGKILL", "SIGSTOP"])
def test_a_signal_to_one_rank(tmp_path, sig, monkeypatch):
    """SIGTERM to rank 1: every rank stops at the same step, rank 0 saves once, exit 143 within
    10 s. kill -9 of rank 1: the others are stopped with a clear message, non-zero, within 30 s,
    and the last checkpoint is intact. SIGSTOP (a hung rank, which mpiexec does not notice):
    rank 0's collective times out and MPI_Abort ends the job."""
    from netdsl.train.checkpoint import load_checkpoint
    _mpiexec()
    net = tmp_path / "tiny.net"
    net.write_text(TINY)
    out = tmp_path / "run"
    monkeypatch.setenv("NETDSL_MPI_TIMEOUT", "5")
    proc = _run([str(net), "--out", str(out), "--workers", "2"], stderr=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoint.npz", proc)
        os.kill(_rank_pid(proc.pid, 1), sig)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    ck = load_checkpoint(str(out / "checkpoint.npz"))   # loads: intact
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and took < 10, (proc.returncode, took, stderr)
        assert ck["meta"]["interrupted"] and "interrupted by SIGTERM" in stdout
        assert stdout.count("checkpoint saved") == 1   # rank 0 alone
    else:
        assert proc.returncode not in (0, 143) and took < 30, (proc.returncode, took)
        assert not ck["meta"]["interrupted"]
        assert ("ended abnormally" if sig == signal.SIGKILL else
                "no answer from the other ranks") in stderr, stderr


@pytest.mark.slow
def test_resume_two_rank_checkpoint_on_one_process(tmp_path):
    """Continue a 2-rank checkpoint (`--workers 2`) with 1 process and with 2 ranks (under
    `mpiexec -n 2`): the same weights and history."""
    from netdsl.train.checkpoint import load_checkpoint
    _mpiexec()
    net = tmp_path / "tiny.net"
    net.write_text(TINY)
    first = tmp_path / "first"
    assert _run([str(net), "--out", str(first), "--epochs", "1", "--workers", "2"]).wait() == 0
    results = {}
    for ranks in (2, 1):   # 2: under an external mpiexec, as on a cluster
        out = tmp_path / f"cont{ranks}"
        shutil.copytree(first, out)
        ck = str(out / "checkpoint.npz")
        args = ["run", str(net), "--out", str(out), "--epochs", "2", "--resume", ck, "--quiet",
                "--no-plots"]
        launcher = [_mpiexec(), "-n", "2"] if ranks == 2 else []
        subprocess.run([*launcher, sys.executable, "-m", "netdsl", *args], env=_env(), cwd=ROOT,
                       check=True, timeout=300)
        results[ranks] = load_checkpoint(ck)
    two, one = results[2], results[1]
    assert two["step"] == one["step"] > 0
    for name, tensors in one["params"].items():
        for key, ref in tensors.items():
            got = two["params"][name][key]
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), (name, key)
    assert [r["test_acc"] for r in two["metrics"]["history"]] == \
        [r["test_acc"] for r in one["metrics"]["history"]]


@pytest.mark.slow
def test_sweep_on_two_ranks_prints_the_serial_table(tmp_path):
    """Instances trained on 2 ranks: the table and CSV of the serial sweep, with the default
    thread count and with --threads 1 on both sides (float sums, so accuracies, depend on the
    thread count: a sweep uses the same count either way)."""
    _mpiexec()
    tables = {}
    for name, extra in (("serial", []), ("ranks", ["--workers", "2"]),
                        ("serial1", ["--threads", "1"]),
                        ("ranks1", ["--workers", "2", "--threads", "1"])):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "-m", "netdsl", "sweep", "nets/cs231n.net",
                              "--set", "N=1..2", "--set", "M=2", "--epochs", "1", "--limit",
                              "300", "--quiet", "--out", str(out), *extra], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        tables[name] = (res.stdout.split("wrote")[0], (out / "sweep.csv").read_text())
    assert tables["serial"] == tables["ranks"]
    assert tables["serial1"] == tables["ranks1"]
    assert tables["serial"][0].count("%") == 2
