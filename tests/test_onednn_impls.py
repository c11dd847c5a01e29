"""Issue 14, item 4: no convolution of the benchmark nets (and ResNet-50) runs a slow oneDNN
fallback (`gemm`: im2col + GEMM, or `ref`: reference loops), on this host's ISA *and* capped
to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, which must be set before libdnnl loads: a subprocess).

The names are read back from the primitive descriptors the kernels run
(``dnnl_primitive_desc_query(impl_info_str)``): oneDNN's own report, independent of netdsl.
Before the provider asked for ``format any`` weights, every forward convolution on AVX2 was
``x64:gemm:jit``; the test fails on that code. ResNet-50 is checked at 64×64: oneDNN 3.2
chose the same implementation for each of its 53 convolutions (train and inference) at
224×224, natively (AVX-512) and under the AVX2 cap (docs/performance.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netdsl.runtime import kernels

from conftest import NETS, ROOT

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

CASES = {   # net file, input shape (None: the net's own)
    "lenet5": ("lenet5.net", None),
    "cs231n": ("cs231n.net", (32, 32, 3)),
    "resnet20": ("resnet20.net", (32, 32, 3)),
    "inception_small": ("inception_small.net", (32, 32, 3)),
    "resnet50": ("resnet50.net", (64, 64, 3)),
}

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from {module} import {function} as ask
print(json.dumps({{name: ask(name) for name in {names!r}}}))
"""


def capped_to_avx2(module: str, function: str, names) -> dict:
    """``{name: module.function(name)}`` computed in a subprocess with
    ONEDNN_MAX_CPU_ISA=AVX2 (the cap must be set before libdnnl loads); the tests of the
    other oneDNN choices (LRN, layouts) ask their questions through it too."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(ROOT))
    code = SCRIPT.format(tests=str(ROOT / "tests"), module=module, function=function,
                         names=list(names))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def no_avx512_names(found: dict) -> None:
    """The cap took effect: no implementation name of ``found`` ({net: {mode: {layer:
    {pass: name}}}}) is an AVX-512 or AMX one (a host without AVX2 would report lower ISAs)."""
    names = {impl for f in found.values() for m in f.values() for p in m.values()
             for impl in p.values()}
    assert not any("avx512" in n or "amx" in n for n in names), names


def impls(name: str) -> dict:
    """``{mode: {conv node: {pass: implementation}}}`` of one net, batch 2."""
    from netdsl.compile.compiler import compile_file
    from netdsl.runtime.executor import Executor
    from netdsl.runtime.kernels.onednn.impls import conv_impls
    path, shape = CASES[name]
    g = compile_file(str(NETS / path), input_shape=shape, num_classes=10).graph
    ex = Executor(g, seed=0, kernels="onednn")
    return {"train": conv_impls(ex.plan, 2, True),
            "infer": conv_impls(ex.for_inference().plan, 2, False)}


def _slow_ones(found: dict) -> list:
    from netdsl.runtime.kernels.onednn.impls import slow
    return [(mode, node, step, impl) for mode, convs in found.items()
            for node, passes in convs.items() for step, impl in passes.items() if slow(impl)]


def _check(name, found):
    assert found["train"] and found["infer"], f"{name}: no oneDNN convolution"
    assert not _slow_ones(found), f"{name}: {_slow_ones(found)}"


@pytest.mark.parametrize("name", list(CASES))
def test_no_gemm_or_ref_convolution_on_this_host(name):
    _check(name, impls(name))


def test_no_gemm_or_ref_convolution_capped_to_avx2():
    found = capped_to_avx2("test_onednn_impls", "impls", CASES)
    for name in CASES:
        _check(name, found[name])
    no_avx512_names(found)
