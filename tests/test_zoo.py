"""The classic-net zoo (nets/*.net) against the literature's numbers, and every net executed.

Expected values come from the papers, torchvision's model summaries or the cs231n notes (cited
at each number), or are recomputed here from the architecture tables — never from our output.
Each net also runs one forward + backward at a reduced input (or width) through the Executor.
"""
import shutil

import numpy as np
import pytest

from conftest import NETS
from netdsl.cli.app import main
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.compile.summary import summarize

ALL_NETS = sorted(p.stem for p in NETS.glob("*.net"))
ZOO = ["alexnet", "zfnet", "vgg19", "googlenet", "resnet34", "resnet50", "allcnn_c", "deepface",
       "unet", "segnet_mini"]


def summary(name, *, input=None, sets=None):
    c = compile_file(str(NETS / f"{name}.net"), need_data=False, overrides=sets or {},
                     input_override=input)
    return summarize(c.graph)


def rows(s, op=None):
    return [r for r in s["layers"] if op is None or r["op"] == op]


def test_the_zoo_is_complete():
    assert set(ZOO) <= set(ALL_NETS)


@pytest.mark.parametrize("name", ALL_NETS)
def test_check_passes(name, capsys):
    args = ["check", str(NETS / f"{name}.net")]
    if name in ("cs231n", "inception_small"):      # input from the dataset: give one instead
        args += ["--input", "16x16x1"]
    assert main(args) == 0, capsys.readouterr().err


# Published totals: params, MACs (None where the source gives none).
PUBLISHED = {
    "alexnet": (60_965_224, None),              # cs231n notes / Caffe bvlc_alexnet
    "vgg19": (143_667_240, 19_632_062_464),     # torchvision vgg19 (params, MACs)
    "resnet34": (21_797_672, 3_663_761_408),    # torchvision resnet34
    "resnet50": (25_557_032, 4_089_184_256),    # torchvision resnet50
    "allcnn_c": (1_369_738, None),              # Springenberg et al. 2015, All-CNN-C
    "unet": (31_030_658, None),                 # Ronneberger et al. 2015 (Fig. 1 widths)
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_totals(name):
    params, macs = PUBLISHED[name]
    s = summary(name)
    assert s["totals"]["params"] == params
    if macs is not None:
        assert s["totals"]["macs"] == macs


def test_alexnet_layers():
    s = summary("alexnet")
    assert rows(s, "input")[0]["output_shape"] == "227×227×3"
    conv = rows(s, "conv")
    assert conv[0]["output_shape"] == "55×55×96"
    # groups=2 on conv2/4/5 (two GPUs): weights 5·5·48·256, 3·3·192·384, 3·3·192·256 + biases
    assert [r["params"] for r in conv] == [11 * 11 * 3 * 96 + 96, 5 * 5 * 48 * 256 + 256,
                                           3 * 3 * 256 * 384 + 384, 3 * 3 * 192 * 384 + 384,
                                           3 * 3 * 192 * 256 + 256]
    assert rows(s, "maxpool")[-1]["output_shape"] == "6×6×256"
    assert len(rows(s, "lrn")) == 2
    # FC weights 37,748,736 / 16,777,216 / 4,096,000 (cs231n), plus one bias per unit
    units = (4096, 4096, 1000)
    assert [r["params"] - u for r, u in zip(rows(s, "fc"), units)] == \
        [37_748_736, 16_777_216, 4_096_000]


def test_alexnet_at_224_is_a_located_error_with_the_arithmetic(capsys):
    assert main(["summary", str(NETS / "alexnet.net"), "--input", "224x224x3"]) == 1
    err = capsys.readouterr().err
    assert "alexnet.net:9:" in err and "^" in err
    assert "(224 − 11 + 2·0)/4 + 1 = 54.25" in err
    assert "227×227×3" in err
    assert main(["summary", str(NETS / "alexnet.net"), "--input", "227x227x3"]) == 0
    assert "60,965,224" in capsys.readouterr().out


def test_zfnet_sizes():
    # Zeiler & Fergus 2014, Fig. 3: 110 → 55 → 26 → 13 → 6; cs231n: conv3-5 512, 1024, 512
    s = summary("zfnet")
    sides = [int(r["output_shape"].split("×")[0]) for r in rows(s) if r["op"] in ("conv", "maxpool")]
    assert sides == [110, 55, 26, 13, 13, 13, 13, 6]
    assert [int(r["output_shape"].split("×")[-1]) for r in rows(s, "conv")] == \
        [96, 256, 512, 1024, 512]


# GoogLeNet Table 1: (name, output, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj, params K)
GOOGLENET = [("inc3a", "28×28×256", 64, 96, 128, 16, 32, 32, 159),
             ("inc3b", "28×28×480", 128, 128, 192, 32, 96, 64, 380),
             ("inc4a", "14×14×512", 192, 96, 208, 16, 48, 64, 364),
             ("inc4b", "14×14×512", 160, 112, 224, 24, 64, 64, 437),
             ("inc4c", "14×14×512", 128, 128, 256, 24, 64, 64, 463),
             ("inc4d", "14×14×528", 112, 144, 288, 32, 64, 64, 580),
             ("inc4e", "14×14×832", 256, 160, 320, 32, 128, 128, 840),
             ("inc5a", "7×7×832", 256, 160, 320, 32, 128, 128, 1072),
             ("inc5b", "7×7×1024", 384, 192, 384, 48, 128, 128, 1388)]


def test_googlenet_table1():
    s = summary("googlenet")
    by_name = {r["name"]: r for r in rows(s)}
    stem = [r["output_shape"] for r in rows(s) if "/" not in r["name"]
            and r["op"] in ("conv", "maxpool")][:5]
    assert stem == ["112×112×64", "56×56×64", "56×56×64", "56×56×192", "28×28×192"]
    assert len([r for r in rows(s, "lrn") if "/" not in r["name"]]) == 2
    channels = 192
    for name, out, n1, r3, n3, r5, n5, pp, table_k in GOOGLENET:
        assert by_name[f"{name}/concat1"]["output_shape"] == out
        weights = sum(r["params"] - int(r["output_shape"].split("×")[-1])   # less the biases
                      for r in rows(s, "conv") if r["name"].startswith(name + "/"))
        c = channels
        assert weights == c * n1 + c * r3 + 9 * r3 * n3 + c * r5 + 25 * r5 * n5 + c * pp
        # Table 1's params column (K = 1024 weights) is rounded and, for 4c and 5a, off its own
        # widths by 7.5% and 5%: within 8% of it.
        assert abs(weights / 1024 - table_k) / table_k < 0.08, name
        channels = int(out.split("×")[-1])
    assert by_name["gap1"]["activations"] == 1024           # "avg pool 1×1×1024"
    from netdsl.compile.verify import losses   # main head 1, aux heads 0.3 each (section 5)
    g = compile_file(str(NETS / "googlenet.net"), need_data=False).graph
    assert sorted(float(h.attrs["weight"]) for h in losses(g)) == [0.3, 0.3, 1.0]


def test_resnet_blocks():
    # He et al. 2016 Table 1: conv2_x … conv5_x with 3, 4, 6, 3 blocks for both 34 and 50
    s34, s50 = summary("resnet34"), summary("resnet50")
    assert len(rows(s34, "add")) == 16 and len(rows(s50, "add")) == 16
    assert rows(s50, "gap")[0]["output_shape"] == "2048"


def test_deepface_layers():
    # Taigman et al. 2014, Fig. 2
    s = summary("deepface")
    by = {r["name"]: r["output_shape"] for r in rows(s)}
    assert [by[n] for n in ("input1", "C1", "M2", "C3", "L4", "L5", "L6")] == \
        ["152×152×3", "142×142×32", "71×71×32", "63×63×16", "55×55×16", "25×25×16", "21×21×16"]
    params = {r["name"]: r["params"] for r in rows(s)}
    # locally connected: Ho·Wo·(KH·KW·C·F + F)
    assert params["L4"] == 55 * 55 * (9 * 9 * 16 * 16 + 16)
    assert params["L5"] == 25 * 25 * (7 * 7 * 16 * 16 + 16)
    assert params["L6"] == 21 * 21 * (5 * 5 * 16 * 16 + 16)
    assert s["totals"]["params"] > 100_000_000
    big = params["L4"] + params["L5"] + params["L6"] + params["F7"]
    assert big > 0.85 * s["totals"]["params"] - params["F8"]


def test_unet_shapes_and_skips():
    s = summary("unet")
    assert rows(s, "input")[0]["output_shape"] == "572×572×1"
    assert rows(s, "conv")[-1]["output_shape"] == "388×388×2"
    # Fig. 1: the crops 64→56, 136→104, 280→200, 568→392
    assert [r["output_shape"] for r in rows(s, "crop")] == \
        ["56×56×512", "104×104×256", "200×200×128", "392×392×64"]
    assert len(rows(s, "deconv")) == 4


def test_segnet_mini_unpools_at_the_switches():
    s = summary("segnet_mini")
    unpool = rows(s, "maxunpool")
    assert [r["output_shape"] for r in unpool] == ["14×14×32", "28×28×16"]
    from netdsl.core.graph import node
    g = compile_file(str(NETS / "segnet_mini.net"), need_data=False).graph
    # values from the decoder, positions from the matching pool's output 1 (its switches)
    assert [list(node(g, r["name"]).inputs) for r in unpool] == \
        [[("d2", 0), ("p2", 1)], [("d1", 0), ("p1", 1)]]
    assert rows(s, "conv")[-1]["output_shape"] == "28×28×11"


def test_vgg16_summary_reads_next_to_the_table(capsys):
    """The cs231n notes' VGG-16 table: memory per layer (INPUT, each CONV, POOL, FC) and 138 M
    params. Its rows add up to 15.2 M activations (the notes' "24M ≈ 93 MB" total is not the sum
    of its own rows); netdsl's total also counts each ReLU's output, as the executor holds it."""
    table = [224 * 224 * 3]
    for size, ch, convs in [(224, 64, 2), (112, 128, 2), (56, 256, 3), (28, 512, 3), (14, 512, 3)]:
        table += [size * size * ch] * convs + [(size // 2) * (size // 2) * ch]
    table += [4096, 4096, 1000]
    s = summary("vgg16")
    ours = [r for r in rows(s) if r["op"] in ("input", "conv", "pool", "fc")]
    assert [r["activations"] for r in ours] == table
    assert [r["activation_bytes"] for r in ours] == [4 * n for n in table]   # float32
    assert abs(sum(table) - 15.2e6) < 0.05e6
    relus = sum(r["activations"] for r in rows(s, "relu"))
    assert s["totals"]["activations"] == sum(table) + relus + 2 * 4096       # + 2 dropouts
    assert main(["summary", str(NETS / "vgg16.net")]) == 0
    out = capsys.readouterr().out
    assert "138,357,544" in out and "12.2 MiB" in out          # conv1: 3,211,264 · 4 bytes
    assert f"activations: {s['totals']['activations']:,}" in out


# Reduced inputs (or widths) for one forward + backward per net: (input, --set)
SMALL = {"alexnet": ("67x67x3", {}), "zfnet": ("64x64x3", {}), "vgg16": ("32x32x3", {}),
         "vgg19": ("32x32x3", {}), "googlenet": ("96x96x3", {}), "resnet18": ("32x32x3", {}),
         "resnet34": ("32x32x3", {}), "resnet50": ("32x32x3", {}), "allcnn_c": (None, {"S": 16}),
         "deepface": ("73x73x3", {}), "unet": ("188x188x1", {"W": 4}),
         "segnet_mini": (None, {}), "lenet5": (None, {}), "resnet20": ("16x16x3", {}), "cs231n": ("16x16x1", {}),
         "inception_small": ("16x16x1", {})}


def compile_small(name):
    """(graph, main logits shape) of a zoo net at its reduced size (SMALL); the logits shape
    is (K,) or (H, W, K) per pixel. Shared with tests/test_zoo_memory.py."""
    from netdsl.core.graph import node
    from netdsl.compile.verify import losses
    shape, sets = SMALL[name]
    dims = tuple(int(v) for v in shape.split("x")) if shape else None
    g = compile_file(str(NETS / f"{name}.net"), need_data=False, overrides=sets,
                     input_override=dims).graph
    main_head = max(losses(g), key=lambda h: float(h.attrs.get("weight", 1.0)))
    src, port = main_head.inputs[0]
    return g, node(g, src).out_shapes[port]


@pytest.mark.slow   # 0.3–17 s per net on the shared machine (VGG's 4096-wide FCs dominate)
@pytest.mark.parametrize("name", ALL_NETS)
def test_forward_backward_at_reduced_size(name):
    g, logits_shape = compile_small(name)
    ex = Executor(g, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *ex.input_shape)).astype(np.float32)
    labels = rng.integers(0, logits_shape[-1], size=(2, *logits_shape[:-1]))
    result = ex.forward(x, labels, training=True)
    assert result.logits.shape == (2, *logits_shape) and np.isfinite(result.loss)
    grads = ex.backward()
    assert grads.keys() == ex.params.keys()
    for layer, per_layer in grads.items():
        for key, grad in per_layer.items():
            assert grad.shape == ex.params[layer][key].shape, (layer, key)
            assert np.all(np.isfinite(grad)), (layer, key)
    assert any(np.any(g != 0) for per_layer in grads.values() for g in per_layer.values())


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
@pytest.mark.parametrize("name", ZOO)
def test_draw_renders(name, tmp_path):
    out = tmp_path / f"{name}.svg"
    assert main(["draw", str(NETS / f"{name}.net"), "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))
