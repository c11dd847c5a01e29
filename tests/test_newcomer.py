"""What a newcomer hit first: --version, help for the training flags, a finished run's .lock,
pictures of show written next to the checkpoint rather than into the current directory."""
from __future__ import annotations

import sys

import pytest

from conftest import NETS
from netdsl.cli.app import main
from netdsl.core.errors import NetdslError
from netdsl.train import rundir
from netdsl.train.rundir import LOCK_NAME, open_run_dir

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="flock")


def test_version_is_pyprojects(capsys):
    import re
    from conftest import ROOT
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    expected = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                         re.M).group(1)
    assert capsys.readouterr().out.strip() == f"netdsl {expected}"


@pytest.mark.parametrize("flag, words", [("--epochs", "passes over the training set"),
                                         ("--batch-size", "examples per training step"),
                                         ("--lr", "learning rate"), ("--seed", "seed of")])
def test_training_flags_have_help(flag, words, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    assert f"{flag} N {words}" in text or f"{flag} LR {words}" in text, text


@posix_only
def test_a_finished_run_removes_its_lock(tmp_path):
    with open_run_dir(str(tmp_path / "run")):
        assert (tmp_path / "run" / LOCK_NAME).exists()
        with pytest.raises(NetdslError, match="in use"):
            open_run_dir(str(tmp_path / "run"))          # the lock still holds
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with pytest.raises(NetdslError):
        with open_run_dir(str(tmp_path / "run")):
            raise NetdslError("a run that fails")
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@posix_only
def test_removing_the_lock_cannot_let_two_runs_in(tmp_path, monkeypatch):
    """A run opens .lock just before the run holding it finishes and removes it; when it then
    locks, the file it holds is no longer the lock. It must lock the new file, so that a third
    run is refused (without the check, the second held a deleted file and the third got in)."""
    import fcntl as real
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / LOCK_NAME

    class Finishing:
        """fcntl whose first exclusive lock comes right after the holder removed .lock."""
        LOCK_EX, LOCK_NB, LOCK_UN = real.LOCK_EX, real.LOCK_NB, real.LOCK_UN
        raced = False

        def flock(self, fd, op):
            if op & real.LOCK_EX and not Finishing.raced:
                Finishing.raced = True
                lock.unlink()
            return real.flock(fd, op)

    monkeypatch.setattr(rundir, "fcntl", Finishing())
    with open_run_dir(str(tmp_path / "run")):
        assert Finishing.raced and lock.exists()
        with pytest.raises(NetdslError, match="in use"):
            open_run_dir(str(tmp_path / "run"))


@pytest.mark.slow   # trains one epoch
def test_show_writes_its_pictures_next_to_the_checkpoint(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert main(["run", str(NETS / "lenet5.net"), "--epochs", "1", "--out", str(run),
                 "--quiet", "--no-plots"]) == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["show", str(NETS / "lenet5.net"), "--weights", str(run / "checkpoint.npz"),
                 "--filters"]) == 0
    assert (run / "filters.png").exists() and not list(cwd.iterdir())
    digit = NETS.parent / "docs" / "examples" / "digit3.png"
    assert main(["show", str(NETS / "lenet5.net"), "--weights", str(run / "checkpoint.npz"),
                 str(digit), "--layer", "C1"]) == 0
    assert (run / "C1_maps.png").exists() and not list(cwd.iterdir())
    out = tmp_path / "mine.png"
    assert main(["show", str(NETS / "lenet5.net"), "--weights", str(run / "checkpoint.npz"),
                 "--filters", "-o", str(out)]) == 0
    assert out.exists()


def test_quiet_native_stderr_drops_what_c_code_writes_and_restores_it(capfd):
    import os
    from netdsl.tools.bench_torch import quiet_native_stderr
    with quiet_native_stderr():
        os.write(2, b"USDT: profiler_start\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.slow   # a subprocess with PyTorch
def test_bench_compare_torch_prints_no_profiler_or_cuda_noise():
    pytest.importorskip("torch")
    import os
    import subprocess
    from conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "netdsl", "bench", str(NETS / "lenet5.net"),
                        "--mode", "infer", "--batch-size", "16", "--compare", "torch",
                        "--steps", "2", "--rounds", "1", "--no-layers"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "pytorch" in r.stdout
    assert r.stderr == "", r.stderr   # was: USDT profiler_start/stop, gpuGetDeviceCount ERROR
