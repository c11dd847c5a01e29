"""Nothing lost: --out checked and locked before any work, no clobbered checkpoints,
SIGTERM/SIGHUP save like Ctrl-C, temp files cleaned, the record of an interrupted epoch exact,
too-large nets refused with their size. (Refusals on resume: test_resume_checks.py.)"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import NETS, ROOT
from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.runtime.executor import Executor
from netdsl.runtime.memory_estimate import check_fits, estimate_run_bytes
from netdsl.train.checkpoint import save_checkpoint
from netdsl.lang.train_config import TrainConfig
from netdsl.data.loader import Dataset
from netdsl.train.fingerprint import graph_fingerprint
from netdsl.train.loop import Interrupted, Trainer
from netdsl.train.rundir import open_run_dir

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")
LINEAR = NETS / "patterns" / "linear.net"
TIMING = ("seconds", "images_per_s", "step_time_s")


def netdsl(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "netdsl", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


# -- SIGTERM mid-epoch, then resume == one run straight through -------------------------------

# The real CLI in a child process that sends itself SIGTERM right after optimizer step STOP:
# a real signal through the real handler, at a step that does not depend on machine speed.
_KILL_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    from netdsl.train import optim
    from netdsl.cli.app import main
    real, calls = optim.SGD.step, [0]
    def step(self, *a, **k):
        real(self, *a, **k)
        calls[0] += 1
        if calls[0] == int(os.environ["STOP"]):
            os.kill(os.getpid(), signal.SIGTERM)
    optim.SGD.step = step
    sys.exit(main(sys.argv[1:]))
""")

RUN = ["run", NETS / "patterns" / "one_conv.net", "--set", "WIDTH=8", "--set", "schedule=cosine",
       "--epochs", 2, "--batch-size", 64, "--seed", 5, "--quiet"]    # digits: 23 batches/epoch


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _epoch_lines(stdout: str) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.mark.slow   # starts netdsl subprocesses
@posix_only
def test_sigterm_mid_epoch_saves_and_resume_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    straight = netdsl(*RUN, "--out", a)
    assert straight.returncode == 0, straight.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT), STOP="30")   # 7 batches into epoch 2
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_STEP, *map(str, RUN), "--out", b],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr
    assert "SIGTERM" in killed.stdout and "1 complete epoch(s) and 7 batch(es)" in killed.stdout
    assert f"--resume {b / 'checkpoint.npz'}" in killed.stdout
    assert json.loads((b / "metrics.json").read_text())["interrupted"] is True

    resumed = netdsl(*RUN, "--out", b, "--resume", b / "checkpoint.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert "1 epoch(s) done, 7 batch(es) into epoch 2" in resumed.stdout
    with np.load(a / "checkpoint.npz") as wa, np.load(b / "checkpoint.npz") as wb:
        keys = [k for k in wa.files if k.startswith(("param/", "opt/"))]
        assert keys and sorted(keys) == sorted(k for k in wb.files if k.startswith(("param/",
                                                                                     "opt/")))
        for key in keys:
            assert np.array_equal(wa[key], wb[key]), key          # bit for bit
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    assert len(ha) == 2 and _untimed(hb) == _untimed(ha)
    # The printed epoch lines too (the img/s at the end of each is timing).
    assert _epoch_lines(killed.stdout) + _epoch_lines(resumed.stdout) == \
        _epoch_lines(straight.stdout)


# -- in-process: SIGHUP, the epoch's sums --------------------------------------------------

NET = "INPUT(6x6x1) -> CONV(4, 3) -> RELU -> FC(12) -> RELU -> FC"


def dataset(n=60):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 6, 6, 1)) + y[:, None, None, None]).astype(np.float32)
    cut = n - 10
    return Dataset("toy", x[:cut], y[:cut], x[cut:], y[cut:], 3, (6, 6, 1), "held-out last 10")


def trainer(out_dir, net=NET, epochs=2, n=60, **cfg):
    cfg = TrainConfig(**{"epochs": epochs, "batch_size": 8, "lr": 0.05, "seed": 4, **cfg})
    g = compile_text(net, num_classes=3).graph
    warnings = []
    t = Trainer(Executor(g, seed=cfg.seed), cfg, dataset(n), out_dir=str(out_dir),
                show_progress=False, log=lambda *a: None, warn=warnings.append,
                meta={"graph": graph_fingerprint(g)})       # as compiled, as the CLI does
    t.warnings = warnings
    return t


@posix_only
def test_sighup_stops_between_steps_saves_and_reports_129(tmp_path):
    t = trainer(tmp_path)
    real = t.optimizer.step

    def step(*args, **kw):
        real(*args, **kw)
        if t.step == 2:                          # t.step counts the steps before this one
            os.kill(os.getpid(), signal.SIGHUP)
    t.optimizer.step = step
    with pytest.raises(Interrupted) as stop:
        t.run()
    assert stop.value.exit_status == 129 and t.step == 3
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL      # handler restored
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["interrupted"] is True and meta["epochs_done"] == 0


@posix_only
def test_a_second_signal_interrupts_at_once_and_nohup_is_respected():
    from netdsl.train.signals import StopFlag
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)      # as under nohup
    try:
        with StopFlag() as flag:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert flag.signum == signal.SIGTERM                  # first: only recorded
            with pytest.raises(KeyboardInterrupt) as stop:
                os.kill(os.getpid(), signal.SIGTERM)              # second: at once
                for _ in range(1000):                             # let the handler run
                    pass
            # ... with SIGTERM's status, as a shell reports it (it was Ctrl-C's 130)
            assert stop.value.exit_status == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, old_hup)


def test_interrupted_epoch_row_equals_the_straight_one(tmp_path):
    straight = trainer(tmp_path / "a")
    straight.run()
    first = trainer(tmp_path / "b")
    real = first.optimizer.step

    def step(*args, **kw):
        real(*args, **kw)
        if first.step == 3:
            first._stop.hit = True
    first.optimizer.step = step
    with pytest.raises(KeyboardInterrupt):
        first.run()
    second = trainer(tmp_path / "b")
    second.resume(str(tmp_path / "b" / "checkpoint.npz"))
    assert second.sums.batches == 4 and second.sums.seen == 32
    second.run()
    for row_a, row_b in zip(straight.history, second.history, strict=True):
        for key in ("loss", "train_acc", "test_acc", "lr", "epoch"):
            assert row_a[key] == row_b[key], key


# -- --out: checked and locked before anything else ------------------------------------------

# The real CLI with the dataset loader replaced by a tripwire.
_NO_DATA = textwrap.dedent("""
    import sys
    from netdsl.data import loader as data
    def tripwire(*a, **k):
        print("DATA LOADED", file=sys.stderr)
        sys.exit(3)
    data.load_dataset = tripwire
    from netdsl.cli.app import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow   # starts netdsl subprocesses
@pytest.mark.parametrize("make", ["file", "under_file"])
def test_bad_out_is_reported_before_any_data_is_loaded(tmp_path, make):
    (tmp_path / "f").write_text("not a directory\n")
    out = tmp_path / "f" if make == "file" else tmp_path / "f" / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _NO_DATA, "run", str(LINEAR), "--out", str(out),
                        "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"--out '{out}'" in r.stderr and "file" in r.stderr
    assert "DATA LOADED" not in r.stderr
    assert (tmp_path / "f").read_text() == "not a directory\n"


@pytest.mark.parametrize("name", ["n" * 300, "n" * 300 + "/run"])   # past NAME_MAX (255)
def test_an_out_name_too_long_is_a_netdsl_error(tmp_path, name):
    with pytest.raises(NetdslError, match="cannot be created"):
        open_run_dir(str(tmp_path / name))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write anywhere")
def test_unwritable_out_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(NetdslError, match="writable|cannot"):
            open_run_dir(str(ro / "run"))
    finally:
        ro.chmod(0o755)


_HOLD = "import sys, time\nfrom netdsl.train.rundir import open_run_dir\n" \
        "d = open_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)"


@pytest.mark.slow   # starts netdsl subprocesses
@posix_only
def test_a_second_run_on_a_locked_out_is_refused_naming_the_holder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = netdsl("run", LINEAR, "--epochs", 1, "--out", tmp_path, "--quiet")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "in use by another netdsl run" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert not (tmp_path / "checkpoint.npz").exists()
    finally:
        holder.kill()
        holder.wait()
    with open_run_dir(str(tmp_path)) as run_dir:    # a dead holder's lock is free
        assert run_dir.path == tmp_path


@pytest.mark.slow   # starts netdsl subprocesses
def test_fresh_run_into_a_checkpoint_dir_is_refused_unless_overwrite(tmp_path):
    assert netdsl("run", LINEAR, "--epochs", 1, "--out", tmp_path, "--quiet").returncode == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    r = netdsl("run", LINEAR, "--epochs", 1, "--seed", 9, "--out", tmp_path, "--quiet")
    assert r.returncode == 1 and "already holds a checkpoint" in r.stderr
    assert "--overwrite" in r.stderr and "--resume" in r.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    r = netdsl("run", LINEAR, "--epochs", 1, "--seed", 9, "--out", tmp_path, "--quiet",
               "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() != before


def test_resume_from_another_checkpoint_into_a_used_out_is_refused(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    b.mkdir()
    save_checkpoint(b / "checkpoint.npz", params={}, optimizer_state={}, epoch=1, step=1,
                    metrics={}, meta={})
    save_checkpoint(tmp_path / "other.npz", params={}, optimizer_state={}, epoch=1, step=1,
                    metrics={}, meta={})
    with pytest.raises(NetdslError, match="another checkpoint"):
        open_run_dir(str(b), resume=str(tmp_path / "other.npz"))
    open_run_dir(str(b), resume=str(b / "checkpoint.npz")).release()   # its own: fine
    open_run_dir(str(a)).release()                                      # new dir: fine


def test_leftover_temp_files_are_removed_and_others_kept(tmp_path):
    stale = [tmp_path / ".checkpoint.npz.k3j2x.tmp", tmp_path / ".metrics.json.a8b9.tmp"]
    keep = [tmp_path / "notes.tmp", tmp_path / ".other.npz.x.tmp", tmp_path / "metrics.json"]
    for p in stale + keep:
        p.write_text("x")
    with open_run_dir(str(tmp_path)) as run_dir:
        assert sorted(run_dir.removed_temps) == sorted(p.name for p in stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# -- memory ------------------------------------------------------------------------------

def test_memory_estimate_counts_by_hand():
    from netdsl.runtime.memory import memory_table
    g = compile_text("INPUT(4x4x1) -> FC(3)", num_classes=3).graph
    est = estimate_run_bytes(g, batch_size=10, optimizer="sgd", momentum=0.9,
                             dataset_examples=100)
    weights = 4 * 4 * 3 + 3                       # 51 parameters, all trainable
    assert est["parameters"] == weights * 4
    assert est["optimizer_state"] == 2 * weights * 4          # momentum buffer + scratch
    # The planner's training peak (tested against tracemalloc in test_plan_memory.py); it holds
    # at least the parameter gradients and the batch's logits (no input gradient: the FC reads
    # only the data, and the oneDNN kernels then skip it).
    assert est["training_step"] == memory_table(g, 10)["train_peak_bytes"]
    assert est["training_step"] >= (weights + 10 * 3) * 4
    assert est["dataset"] == 100 * (16 * 4 + 8)
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    adam = estimate_run_bytes(g, batch_size=10, optimizer="adam", weight_decay=1e-4)
    assert adam["optimizer_state"] == 4 * weights * 4          # m, v, scratch, decay scratch


def test_check_fits_refuses_with_both_sizes():
    with pytest.raises(NetdslError) as err:
        check_fits({"parameters": 3 * 2 ** 30, "total": 3 * 2 ** 30}, available=2 ** 30)
    assert "3.0 GiB" in err.value.message and "1.0 GiB" in err.value.message
    assert "batch" in err.value.hint
    check_fits({"parameters": 10, "total": 10}, available=2 ** 30)     # fits: no error


def test_byte_counts_print_without_overflow():
    from netdsl.runtime.memory_estimate import format_bytes
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 * 2 ** 40)] == \
        ["0 B", "1023 B", "1.5 KiB", "3.0 TiB"]
    assert format_bytes(10 ** 400) == f"{10 ** 400 // 2 ** 60:,} EiB"


@pytest.mark.slow   # starts netdsl subprocesses
def test_a_net_too_large_for_memory_is_refused_with_its_size(tmp_path):
    net = tmp_path / "huge.net"
    net.write_text("INPUT(2048x2048x3) -> FC(100000) -> FC\n")   # 1.26e12 weights: ~5 TB
    r = netdsl("run", net, "--epochs", 1, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "needs at least" in r.stderr and "TiB" in r.stderr and "available" in r.stderr
    assert "--batch-size" in r.stderr
