"""Nothing a command writes is lost or half-written, and no command writes over its input
(netdsl/core/files.py): export, import, convert, draw, eval --plot."""
from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from netdsl.cli.app import main
from netdsl.core.errors import NetdslError
from netdsl.core.files import atomic_write, refuse_input_as_output, write_together

from conftest import NETS

ROOT = Path(__file__).resolve().parents[1]
LENET = str(NETS / "lenet5.net")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A LeNet-5 checkpoint from one short epoch on the digits."""
    out = tmp_path_factory.mktemp("run")
    assert main(["run", LENET, "--epochs", "1",
                 "--out", str(out / "run"), "--quiet"]) == 0
    return out


def _snapshot(*paths):
    return {p: Path(p).read_bytes() for p in paths}


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp") or ".tmp." in n)


# -- a command never writes over its own input ------------------------------------------------

def test_export_refuses_to_write_over_its_checkpoint(run_dir, capsys):
    ckpt = str(run_dir / "run" / "checkpoint.npz")
    before = _snapshot(ckpt)
    assert main(["export", LENET, "--weights", ckpt, "-o", ckpt]) == 1
    assert "checkpoint this command reads" in capsys.readouterr().err
    assert _snapshot(ckpt) == before


def test_export_refuses_to_write_over_its_network_file(tmp_path, capsys):
    net = tmp_path / "x.net"
    net.write_text(Path(LENET).read_text())
    before = _snapshot(net)
    # another spelling of the same file counts too (samefile, not string equality)
    assert main(["export", str(net), "-o", str(tmp_path / "." / "x.net")]) == 1
    assert "network file this command reads" in capsys.readouterr().err
    assert _snapshot(net) == before


@pytest.fixture
def onnx_model(tmp_path):
    pytest.importorskip("onnx")
    model = tmp_path / "m.onnx"
    assert main(["export", LENET, "-o", str(model)]) == 0
    return model


@pytest.mark.parametrize("flag", ["-o", "--weights-out"])
def test_import_refuses_to_write_over_its_model(onnx_model, flag, capsys):
    before = _snapshot(onnx_model)
    args = ["import", str(onnx_model), "-o", str(onnx_model.with_suffix(".net"))]
    args += ["--weights-out", str(onnx_model)] if flag == "--weights-out" else []
    if flag == "-o":
        args[3] = str(onnx_model)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "ONNX model this command reads" in err
    assert _snapshot(onnx_model) == before


def test_import_does_not_replace_a_checkpoint_it_did_not_write(onnx_model, run_dir, capsys):
    """The default weights path OUT.npz may be someone's trained checkpoint."""
    net, weights = onnx_model.parent / "lenet.net", onnx_model.parent / "lenet.npz"
    weights.write_bytes((run_dir / "run" / "checkpoint.npz").read_bytes())
    before = _snapshot(weights)
    assert main(["import", str(onnx_model), "-o", str(net)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(weights) == before and not net.exists()
    assert main(["import", str(onnx_model), "-o", str(net), "--overwrite"]) == 0
    assert _snapshot(weights) != before and net.exists()


def test_convert_refuses_to_write_weights_over_its_checkpoint(run_dir, tmp_path, capsys):
    ckpt = tmp_path / "lenet.npz"            # convert writes OUT.npz beside OUT.net
    ckpt.write_bytes((run_dir / "run" / "checkpoint.npz").read_bytes())
    before = _snapshot(ckpt)
    assert main(["convert", LENET, "--fc-to-conv", "--weights", str(ckpt),
                 "-o", str(tmp_path / "lenet.net")]) == 1
    assert "checkpoint this command reads" in capsys.readouterr().err
    assert _snapshot(ckpt) == before and not (tmp_path / "lenet.net").exists()


def test_draw_refuses_to_write_over_its_network_file(tmp_path, capsys):
    net = tmp_path / "x.dot"     # a network file with a diagram's extension: -o accepts it
    net.write_text(Path(LENET).read_text())
    assert main(["draw", str(net), "-o", str(net)]) == 1
    assert _snapshot(net) == {net: Path(LENET).read_bytes()}


def test_refuse_input_as_output_follows_links(tmp_path):
    real = tmp_path / "a.npz"
    real.write_bytes(b"x")
    link = tmp_path / "b.npz"
    link.symlink_to(real)
    with pytest.raises(NetdslError, match="destroy its input"):
        refuse_input_as_output(str(link), {"checkpoint": str(real)})
    refuse_input_as_output(str(tmp_path / "new.npz"), {"checkpoint": str(real)})   # fine


# -- a write that fails part-way leaves the previous file -------------------------------------

def _full_disk():
    """In the child: files may grow to 64 KB at most (write() then fails with EFBIG; Python
    ignores SIGXFSZ), as on a disk that fills up mid-write."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


@pytest.mark.slow   # netdsl subprocesses
def test_an_export_that_fails_mid_write_leaves_the_previous_file(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "lenet.onnx"
    out.write_bytes(b"the previous, good export")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "netdsl", "export", LENET, "-o", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                       preexec_fn=_full_disk)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write ONNX model" in r.stderr and "unchanged" in r.stderr
    assert out.read_bytes() == b"the previous, good export"
    assert _leftovers(tmp_path) == []


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half_then_full(f):
        f.write(b"new, but only ha")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(NetdslError, match="No space left"):
        atomic_write(path, half_then_full, "test file")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_write_together_is_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "n.net", tmp_path / "n.npz"
    a.write_bytes(b"old net")
    b.write_bytes(b"old weights")

    def fails(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(NetdslError):     # the second file cannot be written: nothing changes
        write_together([(a, lambda f: f.write(b"new net")), (b, fails)], "pair")
    assert (a.read_bytes(), b.read_bytes()) == (b"old net", b"old weights")
    real_replace, calls = os.replace, []

    def second_replace_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", second_replace_fails)
    with pytest.raises(NetdslError):     # the first replaced, the second not: put back
        write_together([(a, lambda f: f.write(b"new net")),
                        (b, lambda f: f.write(b"new weights"))], "pair")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (a.read_bytes(), b.read_bytes()) == (b"old net", b"old weights")
    assert _leftovers(tmp_path) == []
    write_together([(a, lambda f: f.write(b"new net")), (b, lambda f: f.write(b"new weights"))],
                   "pair")
    assert (a.read_bytes(), b.read_bytes()) == (b"new net", b"new weights")


# -- generated text is data, never code -------------------------------------------------------

HOSTILE = ['m\n-> FC(5) -> FC(7)\n# ', 'quote"and\'apostrophe', 'arrow->and#hash', 'mödel ünïcode',
           '3digits first', '\r\x00\x1b[31m']


@pytest.mark.parametrize("stem", HOSTILE)
def test_import_writes_hostile_names_as_data(onnx_model, stem):
    """A model file's name goes into the .net's comment and, by default, its `net` name: a
    newline there must not add layers, a quote or '#' must not end anything early."""
    from netdsl.compile.compiler import compile_file
    from netdsl.core.graph import nodes
    model = onnx_model.parent / f"{stem.replace(chr(0), '')}.onnx"
    model.write_bytes(onnx_model.read_bytes())
    out = onnx_model.parent / f"{stem.replace(chr(0), '')}.net"
    plain = onnx_model.parent / "plain.net"
    assert main(["import", str(model), "-o", str(out)]) == 0
    assert main(["import", str(onnx_model), "-o", str(plain)]) == 0
    hostile, reference = compile_file(str(out)).graph, compile_file(str(plain)).graph
    assert [(r.op, r.out_shapes) for r in nodes(hostile)] == \
        [(r.op, r.out_shapes) for r in nodes(reference)]
    first = out.read_text().splitlines()[0]
    assert first.startswith("# Imported from \"") and first.endswith("by netdsl import.")


def test_convert_of_a_file_with_a_hostile_name_compiles(tmp_path):
    from netdsl.compile.compiler import compile_file
    net = tmp_path / "my-net\n-> FC(3)\n#.net"
    net.write_text(Path(LENET).read_text().replace("net lenet5", "# (name from the file)"))
    out = tmp_path / "conv.net"
    assert main(["convert", str(net), "--fc-to-conv", "-o", str(out)]) == 0
    text = out.read_text()
    assert "net my_net_FC_3_conv" in text and compile_file(str(out)).graph.number_of_nodes() > 3


def test_show_pictures_are_written_whole_with_any_name(run_dir, tmp_path, capsys):
    """--out without an extension gets .png (as matplotlib names it); an unknown extension is
    a user error, not an internal one; nothing half-written is left behind."""
    pytest.importorskip("matplotlib")
    ckpt = str(run_dir / "run" / "checkpoint.npz")
    assert main(["show", LENET, "--weights", ckpt, "--filters", "--out",
                 str(tmp_path / "filters")]) == 0
    assert (tmp_path / "filters.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["show", LENET, "--weights", ckpt, "--filters", "--out",
                 str(tmp_path / "f.xyz")]) == 1
    assert "cannot write picture" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["export", "predict"])
def test_non_finite_weights_are_a_user_error(run_dir, tmp_path, command, capsys):
    """export --check on NaN weights exited 70 (the comparison itself was NaN); predict
    printed NaN probabilities. Now the checkpoint is refused, naming the tensor."""
    import numpy as np
    from netdsl.train.checkpoint import load_checkpoint, save_checkpoint
    ck = load_checkpoint(str(run_dir / "run" / "checkpoint.npz"))
    ck["params"]["C1"]["weight"][0, 0, 0, 0] = np.nan
    bad = tmp_path / "nan.npz"
    save_checkpoint(bad, params=ck["params"], optimizer_state={}, epoch=ck["epoch"],
                    step=ck["step"], metrics=ck["metrics"], meta=ck["meta"])
    argv = {"export": ["export", LENET, "--weights", str(bad), "-o", str(tmp_path / "x.onnx"),
                       "--check"],
            "predict": ["predict", LENET, "--weights", str(bad),
                        str(ROOT / "docs" / "examples" / "digit3.png")]}[command]
    if command == "export":
        pytest.importorskip("onnxruntime")
    assert main(argv) == 1
    assert "C1/weight holds 1 NaN or infinite value" in capsys.readouterr().err


def test_convert_refuses_weights_of_another_network(run_dir, tmp_path, capsys):
    """convert --weights wrote a converted checkpoint for any .npz it was given."""
    other = tmp_path / "other.net"
    other.write_text(Path(LENET).read_text().replace("F6: FC(84,", "F6: FC(64,"))
    assert "F6: FC(64," in other.read_text()
    assert main(["convert", str(other), "--fc-to-conv", "--weights",
                 str(run_dir / "run" / "checkpoint.npz"), "-o", str(tmp_path / "o.net")]) == 1
    assert "does not fit this network" in capsys.readouterr().err
    assert not (tmp_path / "o.net").exists() and not (tmp_path / "o.npz").exists()
