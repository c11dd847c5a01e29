"""README.md's tour, run top to bottom as written, in a temporary directory.

The commands are read from the README (its first code block under "## A tour"), so the test
follows the README. A command whose comment says "error:" must fail with a user error (exit
1), every other one must succeed. Training is shortened so that the tour takes well under a
minute; nothing else is changed:

* ``run`` and ``sweep``: ``--epochs N`` becomes ``--epochs 1`` (``2`` for a ``--resume``, one
  more than the run it resumes), and ``--epochs 1`` is added where none is written;
* ``bench``: ``--steps 2 --rounds 1`` (and ``--no-layers``, but for ``--ablate``, which has no
  per-layer table) added, batches of 256 become 32;
* a data folder outside the repository that is not there (``../shared/data/mnist10k``) skips
  that command; commands whose optional package is missing (PyTorch for ``--compare torch``,
  onnx for export/import, Pillow for a PNG, matplotlib for ``show``) are skipped too, and the
  skipped commands are printed (``pytest -s``) — they are not hidden passes.
"""
from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

from conftest import ROOT
from netdsl.cli.app import main

pytestmark = pytest.mark.slow


def tour_commands() -> list[tuple[str, list[str], bool]]:
    """(line, argv after 'netdsl', expect an error) for each command of the README's tour."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## A tour", 1)[1].split("```", 2)[1]
    out = []
    for line in block.splitlines():
        line = line.strip()
        if not line.startswith("netdsl "):
            continue
        command, _, comment = line.partition(" #")
        out.append((line, shlex.split(command)[1:], "error:" in comment))
    return out


def shortened(argv: list[str]) -> list[str]:
    """The command with the training shortened (see the module's note)."""
    argv = list(argv)
    if argv[0] in ("run", "sweep"):
        epochs = "2" if "--resume" in argv else "1"
        if "--epochs" in argv:
            argv[argv.index("--epochs") + 1] = epochs
        else:
            argv += ["--epochs", epochs]
    if argv[0] == "bench":
        argv += ["--steps", "2", "--rounds", "1"] + ([] if "--ablate" in argv else ["--no-layers"])
        argv = ["32" if a == "256" else a for a in argv]
    return argv


def _missing(argv: list[str]) -> str | None:
    """Why a command cannot run here, or None."""
    needs = {"torch": "--compare" in argv and "torch" in argv,
             "onnx": argv[0] in ("export", "import"),
             "PIL": any(a.endswith(".png") for a in argv) and argv[0] in ("predict", "show"),
             "matplotlib": argv[0] == "show"}
    for package, needed in needs.items():
        if needed and importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    for a in argv:
        m = re.match(r"(?:mnist|cifar10|npz|folder):(\.\./.*)", a)
        if m and not (ROOT / m.group(1)).exists():
            return f"{m.group(1)} is not there"
    return None


def test_the_readme_tour_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    commands = tour_commands()
    assert len(commands) > 20 and any(a[0] == "run" for _, a, _ in commands)
    # the tour's relative paths: the repository's files beside a fresh working directory
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("nets", "docs"):
        (work / name).symlink_to(ROOT / name)
    if (ROOT.parent / "shared").exists():   # the tour's ../shared/data
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    monkeypatch.chdir(work)
    skipped = []
    for line, argv, error in commands:
        why = _missing(argv)
        if why:
            skipped.append(f"{line}  ({why})")
            continue
        status = main(shortened(argv))
        out = capsys.readouterr()
        assert status == (1 if error else 0), f"{line}\n{out.out[-2000:]}\n{out.err[-2000:]}"
    # what the tour's later commands read was made by its earlier ones
    assert (work / "runs" / "lenet5" / "checkpoint.npz").exists()
    assert not (work / "filters.png").exists()               # show writes beside the run
    assert (work / "runs" / "lenet5" / "filters.png").exists() or any("show" in s
                                                                      for s in skipped)
    if skipped:
        with capsys.disabled():
            print("\nREADME tour: skipped here:\n  " + "\n  ".join(skipped))
