"""Every command that writes, given every kind of bad output path: one of its own inputs, an
existing directory, a path under a regular file, a missing directory, odd characters. Each
case must end as success or a clean user error (exit 0, 1 or 2), leave every input
byte-for-byte as it was, and leave no temporary file behind."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

from netdsl.cli.app import main

from conftest import NETS


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None

LENET = NETS / "lenet5.net"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    net = root / "net.net"
    net.write_text(LENET.read_text())
    assert main(["run", str(net), "--epochs", "1", "--out", str(root / "run"), "--quiet"]) == 0
    ckpt = root / "run" / "checkpoint.npz"
    model = root / "model.onnx"
    if _has("onnx"):
        assert main(["export", str(net), "--weights", str(ckpt), "-o", str(model)]) == 0
    return {"root": root, "net": net, "ckpt": ckpt, "model": model}


def _commands(i, out):
    """(argv, the files that command reads) for each writing command."""
    net, ckpt, model = i["net"], i["ckpt"], i["model"]
    yield ["draw", net, "-o", out], [net]
    yield ["convert", net, "--fc-to-conv", "--weights", ckpt, "-o", out], [net, ckpt]
    yield ["eval", net, "--weights", ckpt, "--data", "digits", "--plot", out], [net, ckpt]
    yield ["show", net, "--weights", ckpt, "--filters", "--output", out], [net, ckpt]
    yield ["sweep", net, "--set", "lr=0.01", "--out", out], [net]
    if _has("onnx"):
        yield ["export", net, "--weights", ckpt, "-o", out], [net, ckpt]
        yield ["export", net, "--weights", ckpt, "-o", out + ".safetensors"], [net, ckpt]
        yield ["import", model, "-o", out], [model]
        yield ["import", model, "-o", out + ".net", "--weights-out", out], [model]


def _bad_outputs(i):
    root = i["root"]
    (root / "plain").write_text("a regular file\n")
    (root / "adir").mkdir(exist_ok=True)
    yield from (str(i["net"]), str(i["ckpt"]), str(i["model"]))            # its own inputs
    yield str(root / "adir")                                                  # a directory
    yield str(root / "plain" / "under")                                       # under a file
    yield str(root / "missing" / "deeper" / "x.png")                          # no such dir
    yield str(root / "new\nline -> FC(3) #.net")                              # odd characters
    yield str(root / "run")                                                   # a run directory


@pytest.mark.slow   # ~70 in-process commands, some training a step
def test_bad_output_paths_never_lose_an_input(inputs):
    watched = [inputs["net"], inputs["ckpt"]] + ([inputs["model"]] if _has("onnx") else [])
    before = {p: p.read_bytes() for p in watched}
    failures, cases = [], 0
    for out in _bad_outputs(inputs):
        for argv, reads in _commands(inputs, out):
            argv = [str(a) for a in argv]
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    status = main(argv)
                except SystemExit as exc:       # argparse usage errors
                    status = exc.code
            cases += 1
            if status not in (0, 1, 2) or "Traceback" in err.getvalue():
                failures.append((argv, status, err.getvalue()[-300:]))
            changed = [str(p) for p in reads if p.read_bytes() != before[p]]
            if changed:
                failures.append((argv, "wrote over its input", changed))
            for p in watched:            # what one command may write, the next one reads
                if p.read_bytes() != before[p]:
                    p.write_bytes(before[p])
    leftovers = [str(p) for p in Path(inputs["root"]).rglob("*") if p.name.endswith(".tmp")
                 or ".tmp." in p.name]
    assert cases >= 60
    assert failures == [], failures[:5]
    assert leftovers == []
