"""A seeded fuzzer: hostile inputs through the real command line, `netdsl.cli.app.main(argv)`.

Three families of mutated input, each run in-process with stdout/stderr captured and a per-case
alarm, plus a few through `python -m netdsl` subprocesses:

* ``.net`` programs: token deletions, duplications and swaps, numbers replaced by huge, zero,
  negative and fractional values, random layers with random arguments; run through check,
  summary (table and JSON) and draw (.dot);
* data files: IDX headers and bodies (plain and gzip), npz arrays, CIFAR pickles, through
  check (headers) and a one-epoch run (full read);
* checkpoints: byte flips, truncation and header JSON edits, through run --resume.

Every case must end with a user-facing outcome: no exit 70 (internal error), no "Traceback" and
no hang. The seed is NETDSL_FUZZ_SEED (default 0) and the case counts are fixed, so CI runs
the same CASES_PER_FAMILY cases every time (FUZZ_CASES in total; docs/testing.md says how many).
A failure prints the argv, the input that caused it and the output, so it can be replayed.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NETS, ROOT
from netdsl.cli.app import main

SEED = int(os.environ.get("NETDSL_FUZZ_SEED", "0"))
CASES_PER_FAMILY = {"programs": 600, "data": 150, "checkpoints": 96, "subprocess": 6}
FUZZ_CASES = sum(CASES_PER_FAMILY.values())
CASE_TIMEOUT_S = 30          # generous: the CI machine may be loaded; a hang never ends
ALLOWED_EXITS = {0, 1, 2}    # 2: argparse's usage errors


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that the CLI's handlers do not swallow it."""


def _on_alarm(signum, frame):
    raise CaseTimeout


def run_cli(argv: list[str]) -> tuple[int | None, str]:
    """(exit status or None on a hang, stdout + stderr) of ``netdsl argv`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([str(a) for a in argv])
            except SystemExit as e:  # argparse
                status = e.code if isinstance(e.code, int) else 1
    except CaseTimeout:
        status = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return status, out.getvalue() + err.getvalue()


class Failures:
    """Collects bad outcomes; the test fails once, listing the first few."""

    def __init__(self):
        self.items, self.cases = [], 0

    def check(self, argv, status, output, what: str) -> None:
        self.cases += 1
        problem = ("hang" if status is None else f"exit {status}" if status not in ALLOWED_EXITS
                   else "traceback" if "Traceback" in output
                   else "internal error" if "internal error" in output else None)
        if problem:
            self.items.append(f"{problem}: netdsl {' '.join(map(str, argv))}\n  input: {what}\n"
                              f"  output: {output[-1500:]}")

    def assert_none(self, family: str) -> None:
        print(f"fuzz {family}: {self.cases} cases, seed {SEED}, {len(self.items)} failures")
        assert not self.items, f"{len(self.items)} of {self.cases} cases failed:\n" + \
            "\n".join(self.items[:5])


# ---------------------------------------------------------------------------------------------
# Programs

SEEDS = [p.read_text(encoding="utf-8") for p in sorted(NETS.glob("*.net"))] + [
    "INPUT(8x8x1) -> CONV(4, 3) -> RELU -> MAXPOOL -> FC\n",
    "param N = 2\nINPUT(16x16x3) -> [CONV(8, 3, pad=1) -> BN -> RELU]*N -> GAP -> FC\n",
    "block b(c) { residual { CONV(c, 3, pad=1) -> RELU } }\nINPUT(8x8x2) -> b(2) -> b(2) -> FC\n",
    "INPUT(12x12x1) -> concat { CONV(2,1) | CONV(2,3,pad=1) } -> AVGPOOL(2) -> DROPOUT(0.5) -> FC\n",
    "train { lr = 0.1\n epochs = 2 }\nINPUT(8x8x1) -> FC(16) -> RELU -> FC\n",
]
NUMBERS = ["0", "-1", "1", "2", "3", "7", "0.5", "-0.0", "2147483648", "4294967296",
           "1000000000000000", "1" + "0" * 40, "1" + "0" * 300, "1e308", "1e-300", "99999"]
TOKEN = re.compile(r"\s+|->|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?(?:e-?\d+)?|\S")


def _layer_names():
    from netdsl.layers import all_specs
    return [s.name.upper() for s in all_specs()]


def _random_layer(rng: random.Random, names) -> str:
    args = [rng.choice(NUMBERS + ["3x3", "same", "true", "auto", "max"]) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        args.append(f"{rng.choice(['stride', 'pad', 'units', 'filters', 'p', 'bogus'])}="
                    f"{rng.choice(NUMBERS)}")
    return f"{rng.choice(names)}({', '.join(args)})" if args else rng.choice(names)


def mutate_program(text: str, rng: random.Random, names) -> str:
    tokens = TOKEN.findall(text)
    for _ in range(rng.randint(1, 4)):
        if not tokens:
            break
        i = rng.randrange(len(tokens))
        op = rng.randrange(6)
        if op == 0:
            del tokens[i]
        elif op == 1:
            tokens.insert(i, tokens[i])
        elif op == 2 and i + 1 < len(tokens):
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
        elif op == 3:
            numbers = [j for j, t in enumerate(tokens) if t[:1].isdigit()]
            if numbers:
                tokens[rng.choice(numbers)] = rng.choice(NUMBERS)
        elif op == 4:
            arrows = [j for j, t in enumerate(tokens) if t == "->"] or [len(tokens)]
            tokens.insert(rng.choice(arrows), f"-> {_random_layer(rng, names)} ")
        else:
            tokens.insert(i, rng.choice(["{", "}", "(", ")", "[", "]", "*", "|", "@", "#",
                                         "//", ",", "=", "?", "x", "\n", "\u00d7", "\t"]))
    return "".join(tokens)


def program_argv(path: Path, rng: random.Random, tmp: Path) -> list:
    command = rng.choice(["check", "summary", "summary-json", "draw", "draw-fold"])
    extra = ["--input", rng.choice(["8x8x1", "32x32x3", "1x1x1", "0x4x4", "9999x9999x3"])] \
        if rng.random() < 0.2 else []
    if rng.random() < 0.15:
        extra += ["--set", rng.choice(["N=3", "M=0", "K=-1", "WIDTH=3", "HIDDEN=0", "lr=-1",
                                       "epochs=0", "batch_size=1e9", "augment=flip", "N=abc"])]
    if command == "check":
        return ["check", path, *extra]
    if command.startswith("summary"):
        fmt = ["--format", "json"] if command.endswith("json") else []
        return ["summary", path, "--batch", rng.choice([1, 3, 10**9]), *fmt, *extra]
    return ["draw", path, "-o", tmp / "out.dot", *(["--fold"] if "fold" in command else []), *extra]


def test_fuzz_programs(tmp_path):
    rng = random.Random(SEED)
    names = _layer_names()
    failures = Failures()
    path = tmp_path / "fuzz.net"
    for _ in range(CASES_PER_FAMILY["programs"]):
        text = mutate_program(rng.choice(SEEDS), rng, names)
        path.write_text(text, encoding="utf-8")
        argv = program_argv(path, rng, tmp_path)
        status, output = run_cli(argv)
        failures.check(argv, status, output, repr(text[:400]))
    failures.assert_none("programs")


# ---------------------------------------------------------------------------------------------
# Data files

TINY_NET = "INPUT(8x8x1) -> FC(12) -> RELU -> FC\n"


def _idx(magic: int, dims, body: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + body


def _flip(data: bytes, rng: random.Random, count: int = 3) -> bytes:
    b = bytearray(data)
    for i in (rng.randrange(len(b)) for _ in range(count if b else 0)):
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def make_mnist(directory: Path, rng: random.Random) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w = 24, 8, 8
    images = _idx(0x803, (n, h, w), rng.randbytes(n * h * w))
    labels = _idx(0x801, (n,), bytes(rng.randrange(10) for _ in range(n)))
    kind = rng.randrange(8)
    if kind == 0:    # header dims: zero, one, or four billion
        images = _idx(0x803, (rng.choice([0, 1, 2**32 - 1]), rng.choice([0, 8, 2**32 - 1]),
                              rng.choice([8, 2**31])), images[16:])
    elif kind == 1:  # wrong magic / dtype byte
        images = struct.pack(">I", rng.choice([0x801, 0x80C, 0xD03, 0x1F8B0803, 0])) + images[4:]
    elif kind == 2:  # truncated or padded
        images = images[:rng.randrange(len(images))] if rng.random() < 0.5 else images + b"\0" * 7
    elif kind == 3:  # labels beyond 0..9
        labels = labels[:8] + bytes(rng.choice([10, 255, 0]) for _ in range(n))
    elif kind == 4:  # count mismatch
        labels = _idx(0x801, (n - 3,), labels[8:-3])
    elif kind == 5:
        images = _flip(images[:16], rng, 2) + images[16:]
    gz = rng.random() < 0.5
    for stem, data in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        if gz:
            data = gzip.compress(data)
            if kind == 6:   # a damaged gzip stream
                data = _flip(data, rng, 4) if rng.random() < 0.5 else data[:len(data) // 2]
            if kind == 7 and stem.startswith("train-images"):
                # a small bomb: the header promises 24 images, the stream holds a million bytes
                data = gzip.compress(images + b"\0" * 1_000_000)
        (directory / (stem + (".gz" if gz else ""))).write_bytes(data)
    return f"mnist:{directory}"


def make_npz(path: Path, rng: random.Random) -> str:
    n = 30
    x = rng.choice([np.zeros((n, 8, 8)), np.ones((n, 8, 8, 1), np.uint8), np.ones((n, 1, 8, 8)),
                    np.zeros((n, 8)), np.zeros((n, 8, 8, 2, 2)), np.zeros((0, 8, 8)),
                    np.full((n, 8, 8), np.nan), np.zeros((n, 0, 8)), np.zeros((n, 8, 8), bool),
                    np.zeros((n, 8, 8), complex), np.arange(n * 64, dtype=np.int64).reshape(n, 8, 8)])
    y = rng.choice([np.arange(n) % 10, np.arange(n) * 1_000_000, -np.arange(n), np.arange(n) + 0.5,
                    np.arange(n - 1), np.zeros((n, 3)), np.array(["a"] * n), np.full(n, np.inf),
                    np.full(n, 2**63 - 1, np.uint64), np.ones((n, 1)), np.arange(n) % 3 == 0])
    arrays = {"x": x, "y": y}
    if rng.random() < 0.1:
        del arrays[rng.choice(["x", "y"])]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if rng.random() < 0.3:
        data = _flip(data, rng, rng.randint(1, 6)) if rng.random() < 0.6 else data[:rng.randrange(len(data))]
    path.write_bytes(data)
    return f"npz:{path}"


class _Evil:
    """Unpickling this would run `touch`: the loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_cifar(directory: Path, rng: random.Random) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    n = 20
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [i % 10 for i in range(n)]}
    kind = rng.randrange(9)
    if kind == 0:
        del batch[rng.choice([b"data", b"labels"])]
    elif kind == 1:
        batch[b"data"] = rng.choice([np.zeros((n, 3071), np.uint8), np.zeros((n, 3072)),
                                     [[1, 2], [3]], "text", np.zeros(5), None])
    elif kind == 2:
        batch[b"labels"] = rng.choice([[[1], [2, 3]], ["a"] * n, [2**70] * n, list(range(n - 1)),
                                       [-1] * n, [10] * n, None, 3.5])
    elif kind == 3:
        batch = rng.choice([[1, 2, 3], "not a dict", None, {1: 2}])
    elif kind == 4:
        batch = {b"data": _Evil(directory / "pwned"), b"labels": []}
    data = pickle.dumps(batch, protocol=rng.choice([2, 4]))
    if kind == 5:
        data = _flip(data, rng, 5)
    elif kind == 6:
        data = data[:rng.randrange(len(data))]
    (directory / "data_batch_1").write_bytes(data)
    return f"cifar10:{directory}"


def test_fuzz_data_files(tmp_path):
    rng = random.Random(SEED + 1)
    failures = Failures()
    net = tmp_path / "tiny.net"
    net.write_text(TINY_NET, encoding="utf-8")
    for i in range(CASES_PER_FAMILY["data"]):
        case = tmp_path / f"case{i}"
        maker = (make_mnist, make_npz, make_cifar)[i % 3]
        spec = maker(case if maker is not make_npz else tmp_path / f"case{i}.npz", rng)
        if rng.random() < 0.5:
            argv = ["check", net, "--set", f"data={spec}"]
        else:
            argv = ["run", net, "--data", spec, "--epochs", 1, "--batch-size", 8, "--quiet",
                    "--out", tmp_path / f"out{i}"]
        status, output = run_cli(argv)
        failures.check(argv, status, output, spec)
    assert not any(tmp_path.rglob("pwned")), "a pickle ran code"
    failures.assert_none("data")


# ---------------------------------------------------------------------------------------------
# Checkpoints

def _header_edits(header: dict, rng: random.Random) -> dict:
    h = json.loads(json.dumps(header))
    key = rng.choice(list(h) + ["epoch", "step", "meta", "metrics", "optimizer"])
    h[key] = rng.choice([-1, 10**30, "abc", None, [], {}, 1.5, True])
    if rng.random() < 0.3 and isinstance(h.get("meta"), dict):   # and one field inside meta
        h["meta"][rng.choice(list(h["meta"]) or ["x"])] = rng.choice([None, -5, "??", [1]])
    return h


def mutate_checkpoint(good: Path, out: Path, rng: random.Random) -> str:
    data = good.read_bytes()
    kind = rng.randrange(4)
    if kind == 0:
        out.write_bytes(_flip(data, rng, rng.randint(1, 8)))
        return "byte flips"
    if kind == 1:
        out.write_bytes(data[:rng.randrange(len(data))])
        return "truncated"
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header_key = next(k for k in arrays if not k.startswith(("param/", "opt/")))
    if kind == 2:
        header = json.loads(str(arrays[header_key]))
        arrays[header_key] = np.array(json.dumps(_header_edits(header, rng)))
        what = "header edit"
    else:
        victim = rng.choice(list(arrays))
        arrays[victim] = rng.choice([np.zeros(3), np.zeros((2, 2, 2)), np.array("x"),
                                     np.full(arrays[victim].shape, np.nan)])
        what = f"array {victim} replaced"
        if rng.random() < 0.3:
            del arrays[victim]
            what = f"array {victim} removed"
    with open(out, "wb") as f:
        np.savez(f, **arrays)
    return what


def test_fuzz_checkpoints(tmp_path):
    rng = random.Random(SEED + 2)
    net = tmp_path / "tiny.net"
    net.write_text(TINY_NET, encoding="utf-8")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 8, 8)), y=np.arange(40) % 10)
    common = ["--data", f"npz:{data}", "--batch-size", 8, "--quiet"]
    assert run_cli(["run", net, "--epochs", 1, "--out", tmp_path / "good", *common])[0] == 0
    good = next((tmp_path / "good").glob("*.npz"))
    failures = Failures()
    for i in range(CASES_PER_FAMILY["checkpoints"]):
        bad = tmp_path / f"bad{i}.npz"
        what = mutate_checkpoint(good, bad, rng)
        argv = ["run", net, "--resume", bad, "--epochs", 2, "--out", tmp_path / f"out{i}", *common]
        status, output = run_cli(argv)
        failures.check(argv, status, output, what)
    failures.assert_none("checkpoints")


# ---------------------------------------------------------------------------------------------
# The same through `python -m netdsl`, where a traceback or a closed pipe would really show.

@pytest.mark.slow
def test_fuzz_subprocesses(tmp_path):
    rng = random.Random(SEED + 3)
    names = _layer_names()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    failures = Failures()
    cases = [(["layers"], True), (["summary", NETS / "vgg16.net"], True)]
    for _ in range(CASES_PER_FAMILY["subprocess"] - len(cases)):
        path = tmp_path / f"p{len(cases)}.net"
        path.write_text(mutate_program(rng.choice(SEEDS), rng, names), encoding="utf-8")
        cases.append((program_argv(path, rng, tmp_path), False))
    for argv, close_early in cases:
        proc = subprocess.Popen([sys.executable, "-m", "netdsl", *map(str, argv)], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if close_early:   # like `netdsl layers | head -1`: the reader leaves after one line
            proc.stdout.readline()
            proc.stdout.close()
        try:
            out, err = proc.communicate(timeout=120)
            output = (out or b"").decode() + err.decode()
            # 141 (SIGPIPE's status) is the Unix norm for a closed pipe; a complaint is not.
            status = 0 if close_early and proc.returncode == 141 else proc.returncode
            status = "exception ignored" if "Exception ignored" in output else status
        except subprocess.TimeoutExpired:
            proc.kill()
            status, output = None, ""
        failures.check(argv, status, output, "subprocess")
    failures.assert_none("subprocess")


def test_fuzz_case_count_is_what_docs_say():   # docs/testing.md quotes it: keep in step
    doc = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    assert f"{FUZZ_CASES} cases" in doc
