"""The corpus of broken programs in tests/broken/: each must fail with a located, readable error.

Each file starts with comment lines that say what to expect (written by hand, not produced by
the code under test):

    # expect: <a substring of the rendered error>     (one or more)
    # line: L   # col: C                              (optional: where the caret must be)
    # stage: shapes                                   (optional: the shape stage raises it)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netdsl.core.errors import NetdslError, SourceFile
from netdsl.lang import expand, parse

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BROKEN = TESTS / "broken"
FILES = sorted(BROKEN.glob("*.net"))


def read_header(path: Path) -> dict:
    """The `# key: value` lines at the top of a corpus file."""
    header = {"expect": [], "stage": "language"}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#\s*(expect|line|col|stage):\s*(.*\S)\s*$", line)
        if not match:
            break
        key, value = match.groups()
        if key == "expect":
            header["expect"].append(value)
        else:
            header[key] = int(value) if key in ("line", "col") else value
    return header


def compile_until_error(path: Path, header: dict) -> None:
    source = SourceFile(f"broken/{path.name}", path.read_text(encoding="utf-8"))
    g = expand(parse(source))
    if header["stage"] == "shapes":
        shapes = pytest.importorskip("netdsl.compile.shapes")
        shapes.resolve_auto(g, num_classes=10)
        shapes.infer_shapes(g)


def test_corpus_is_complete():
    assert len(FILES) >= 15
    for path in FILES:
        assert path.read_text(encoding="utf-8").startswith("# expect: "), path.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_broken_program_gives_located_error(path):
    header = read_header(path)
    if header["stage"] == "shapes":
        pytest.importorskip("netdsl.compile.shapes")
    with pytest.raises(NetdslError) as info:
        compile_until_error(path, header)
    err = info.value
    assert err.loc is not None, f"no location: {err.message}"
    if "line" in header:
        assert (err.loc.line, err.loc.col) == (header["line"], header["col"]), err.render()

    rendered = err.render()
    lines = rendered.splitlines()
    assert lines[0].startswith(f"broken/{path.name}:{err.loc.line}:{err.loc.col}: error: ")
    source_line = path.read_text(encoding="utf-8").splitlines()[err.loc.line - 1]
    assert lines[1] == "    " + source_line.replace("\t", " ")
    # The caret sits under column `col` of the source line shown above it.
    caret = re.fullmatch(r"( *)\^~*", lines[2])
    assert caret and len(caret.group(1)) == 4 + err.loc.col - 1, rendered
    for expected in header["expect"]:
        assert expected in rendered, f"{expected!r} not in:\n{rendered}"


@pytest.mark.slow
def test_cli_check_fails_cleanly():
    if not (ROOT / "netdsl" / "__main__.py").exists():
        pytest.skip("the CLI (netdsl/__main__.py) is not there yet")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # All at once: each run is mostly interpreter start-up, so this keeps the test fast.
    runs = [(path, subprocess.Popen([sys.executable, "-m", "netdsl", "check", str(path)],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True))
            for path in FILES]
    for path, proc in runs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0, f"{path.name}: exit 0\n{output}"
        assert "Traceback" not in output, f"{path.name}:\n{output}"
        assert read_header(path)["expect"][0] in output, f"{path.name}:\n{output}"
