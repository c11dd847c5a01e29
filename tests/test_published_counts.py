"""The classic networks' published numbers, reproduced by `netdsl summary --format json`.

Expected values are the literature's (VGG paper/cs231n table, torchvision's ResNet-18, LeNet-5),
and the per-layer VGG activations are recomputed here from the architecture table itself.
"""
import json
import subprocess
import sys

import pytest

from conftest import NETS, ROOT

pytestmark = pytest.mark.slow   # each test starts a `python -m netdsl summary` process


def summary_json(*args):
    out = subprocess.run([sys.executable, "-m", "netdsl", "summary", *args, "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_lenet5_params():
    s = summary_json(str(NETS / "lenet5.net"))
    assert s["totals"]["params"] == 61706
    # C1 156, C3 2,416, C5 48,120, F6 10,164, output 850 (LeCun et al. 1998)
    by_params = [r["params"] for r in s["layers"] if r["params"]]
    assert by_params == [156, 2416, 48120, 10164, 850]
    assert [r["output_shape"] for r in s["layers"] if r["op"] in ("conv", "avgpool")] == \
        ["28×28×6", "14×14×6", "10×10×16", "5×5×16", "1×1×120"]


def test_vgg16_params_macs_and_activation_table():
    s = summary_json(str(NETS / "vgg16.net"))
    assert s["totals"]["params"] == 138_357_544
    assert s["totals"]["macs"] == 15_470_264_320
    # The VGG-16 table: (spatial size, channels, convs) per stage, then a pool.
    expected = []
    for size, ch, convs in [(224, 64, 2), (112, 128, 2), (56, 256, 3), (28, 512, 3), (14, 512, 3)]:
        expected += [size * size * ch] * convs + [(size // 2) * (size // 2) * ch]
    expected += [4096, 4096, 1000]
    got = [r["activations"] for r in s["layers"] if r["op"] in ("conv", "pool", "fc")]
    assert got == expected
    assert expected[0] == 3_211_264 and expected[-4] == 7 * 7 * 512


def test_resnet18_params_and_macs():
    s = summary_json(str(NETS / "resnet18.net"))
    assert s["totals"]["params"] == 11_689_512
    assert abs(s["totals"]["macs"] - 1.81e9) / 1.81e9 < 0.01
    final = [r for r in s["layers"] if r["op"] == "fc"][-1]
    assert final["output_shape"] == "1000"


def test_cs231n_pattern_shapes():
    s = summary_json(str(NETS / "cs231n.net"), "--input", "32x32x3",
                     "--set", "N=2", "--set", "M=3", "--set", "K=2")
    rows = [(r["op"], r["output_shape"]) for r in s["layers"] if r["op"] != "relu"]
    expected = [("input", "32×32×3")]
    size, width = 32, 32
    for _ in range(3):                     # M = 3 stages
        expected += [("conv", f"{size}×{size}×{width}")] * 2   # N = 2 "same" 3×3 convs
        size //= 2
        expected.append(("pool", f"{size}×{size}×{width}"))
        width *= 2
    expected += [("fc", "256"), ("fc", "256"), ("fc", "10")]   # K = 2 hidden, then classes
    assert rows == expected


@pytest.mark.parametrize("n,m,k,pool", [(0, 2, 0, True), (1, 1, 3, False), (3, 2, 1, True)])
def test_cs231n_parameters_from_cli(n, m, k, pool):
    s = summary_json(str(NETS / "cs231n.net"), "--input", "16x16x1", "--set", f"N={n}",
                     "--set", f"M={m}", "--set", f"K={k}", "--set", f"POOL={str(pool).lower()}")
    ops = [r["op"] for r in s["layers"]]
    assert ops.count("conv") == n * m
    assert ops.count("pool") == (m if pool else 0)
    assert ops.count("fc") == k + 1


def test_resnet20_params_by_hand():
    """CIFAR ResNet-20 (He et al. 2016 §4.2) with option-B projection shortcuts, counted here
    from the architecture: 3×3 convs without bias, BN = 2 values per channel, FC-10 with bias."""
    def conv(k, cin, cout):
        return k * k * cin * cout

    def bn(c):
        return 2 * c

    def block(cin, cout):
        n = conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
        return n + (conv(1, cin, cout) + bn(cout) if cin != cout else 0)   # projection
    total = conv(3, 3, 16) + bn(16)
    for cin, cout in [(16, 16), (32, 32), (64, 64)]:
        total += block(cin // 2 if cin > 16 else 16, cout) + 2 * block(cout, cout)
    total += 64 * 10 + 10
    assert total == 272_474 == 269_722 + 2_752   # option A's count + the two projections
    s = summary_json(str(NETS / "resnet20.net"))
    assert s["totals"]["params"] == total
    convs = [r["output_shape"] for r in s["layers"] if r["op"] == "conv"]
    assert len(convs) == 19 + 2                   # 19 weighted convs + 2 projections (+ FC = 20)
    assert convs[0] == "32×32×16" and convs[-1] == "8×8×64"
