"""The new layers composed into nets, against PyTorch running the same nets with the same
weights (skipped without torch/torchvision): a small net of every new layer against torch's
own modules (torchvision.ops.SqueezeExcitation, Hardswish, ReLU6, SiLU, chunk, ChannelShuffle),
and torchvision's ShuffleNet v2 x1.0 written in .net (its exact parameter count) with random
BN statistics. Relative L2 error of the logits ≤ 1e-5."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from netdsl.compile.compiler import compile_text      # noqa: E402
from netdsl.compile.model import BoundModel           # noqa: E402
from netdsl.core import graph as G                    # noqa: E402
from netdsl.runtime.executor import Executor          # noqa: E402

SMALL = """
INPUT(13x13x3) -> CONV(16, 3, pad=1) -> BN -> SILU
  -> mul { IDENTITY | GAP(keep=true) -> CONV(4, 1) -> RELU6 -> CONV(16, 1) -> HSIGMOID }
  -> s: SPLIT(2) -> concat { HSWISH | @s.1 -> CONV(8, 1) } -> SHUFFLE(4)
  -> CONV(8, 3, stride=2, pad=1) -> RELU6 -> GAP -> FC(5) -> OUTPUT
"""


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv0, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.se = torchvision.ops.SqueezeExcitation(16, 4, activation=nn.ReLU6,
                                                    scale_activation=nn.Hardsigmoid)
        self.branch = nn.Conv2d(8, 8, 1)
        self.shuffle = nn.ChannelShuffle(4)
        self.down = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        f = torch.nn.functional
        x = self.se(f.silu(self.bn(self.conv0(x))))
        a, b = torch.chunk(x, 2, dim=1)
        x = self.shuffle(torch.cat([f.hardswish(a), self.branch(b)], dim=1))
        x = f.relu6(self.down(x)).mean(dim=(2, 3))
        return self.fc(x)


SHUFFLENET_V2 = """
param ROUND = floor
param SIZE = 224
block down(inp, oup) {
  concat {
      CONV(inp, 3, stride=2, pad=1, groups=inp, bias=false) -> BN
        -> CONV(oup / 2, 1, bias=false) -> BN -> RELU
    | CONV(oup / 2, 1, bias=false) -> BN -> RELU
        -> CONV(oup / 2, 3, stride=2, pad=1, groups=oup / 2, bias=false) -> BN
        -> CONV(oup / 2, 1, bias=false) -> BN -> RELU
  } -> SHUFFLE(2)
}
block unit(c) {
  s: SPLIT(2) -> concat {
      IDENTITY
    | @s.1 -> CONV(c / 2, 1, bias=false) -> BN -> RELU
        -> CONV(c / 2, 3, pad=1, groups=c / 2, bias=false) -> BN
        -> CONV(c / 2, 1, bias=false) -> BN -> RELU
  } -> SHUFFLE(2)
}
INPUT(SIZE x SIZE x 3) -> CONV(24, 3, stride=2, pad=1, bias=false) -> BN -> RELU
  -> MAXPOOL(3, stride=2, pad=1)
  -> down(24, 116) -> [unit(116)]*3
  -> down(116, 232) -> [unit(232)]*7
  -> down(232, 464) -> [unit(464)]*3
  -> CONV(1024, 1, bias=false) -> BN -> RELU -> GAP -> FC(1000)
"""


def _copy_weights(g, model) -> dict:
    """torch's conv, BN and linear weights, in module order, into netdsl's in source order
    (the two nets list their layers alike); BN statistics and affine made non-trivial."""
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.2, 0.2, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.uniform_(-0.2, 0.2, generator=gen)
    params = BoundModel.init(g, seed=0).params
    kinds = {"conv": torch.nn.Conv2d, "batchnorm": torch.nn.BatchNorm2d, "fc": torch.nn.Linear}
    for op, cls in kinds.items():
        ours = [r for r in G.nodes(g) if r.op == op]
        theirs = [m for m in model.modules() if isinstance(m, cls)]
        assert len(ours) == len(theirs), op
        for rec, mod in zip(ours, theirs):
            p = params[rec.name]
            if op == "batchnorm":
                for key, value in (("gamma", mod.weight), ("beta", mod.bias),
                                   ("running_mean", mod.running_mean),
                                   ("running_var", mod.running_var)):
                    p[key][...] = value.detach().numpy()
                continue
            w = mod.weight.detach().numpy()
            p["weight"][...] = w.transpose(2, 3, 1, 0) if op == "conv" else w.T
            if "bias" in p:
                p["bias"][...] = mod.bias.detach().numpy()
    return params


def _rel_l2(g, model, size):
    params = _copy_weights(g, model.eval())
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    ours = Executor(g, params=params).for_inference().forward(x).logits
    with torch.no_grad():
        theirs = model(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def test_every_new_layer_in_one_net_matches_pytorch():
    torch.manual_seed(0)
    g = compile_text(SMALL).graph
    assert _rel_l2(g, Small(), 13) <= 1e-5


def test_shufflenet_v2_matches_torchvision():
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x1_0()
    g = compile_text(SHUFFLENET_V2, overrides={"SIZE": 64}).graph
    total = sum(r.n_params for r in G.nodes(g))
    assert total == sum(p.numel() for p in model.parameters()) == 2_278_604
    assert _rel_l2(g, model, 64) <= 1e-5


def test_bench_compare_torch_builds_the_new_layers_alike():
    """`bench --compare torch`'s PyTorch twin of a net of the new layers (gates flat and 1×1,
    shuffle, slice, the four activations) computes netdsl's logits."""
    from netdsl.tools.bench_torch import build
    text = """
    INPUT(16x16x3) -> CONV(16, 3, pad=1) -> BN -> SILU
      -> mul { IDENTITY | GAP(keep=true) -> CONV(4, 1) -> RELU6 -> CONV(16, 1) -> HSIGMOID }
      -> mul { GAP -> FC(16) -> SIGMOID | IDENTITY }
      -> SHUFFLE(4) -> SLICE(2, 14) -> HSWISH -> GAP -> FC(10)
    """
    g = compile_text(text).graph
    assert _rel_l2(g, build(g), 16) <= 1e-5


@pytest.mark.parametrize("over_n", ["true", "false"])
def test_bench_compare_torch_maps_lrn(over_n):
    """AlexNet's LRN in `bench --compare torch`'s twin (an even and an odd window, Caffe's and
    the paper's alpha) computes netdsl's logits."""
    from netdsl.tools.bench_torch import build
    text = f"""
    INPUT(12x12x3) -> CONV(8, 3) -> RELU -> LRN(5, alpha=1e-2, beta=0.75, k=2, alpha_over_n={over_n})
      -> CONV(6, 3) -> RELU -> LRN(4, alpha=0.5, beta=0.6, alpha_over_n={over_n}) -> GAP -> FC(10)
    """
    g = compile_text(text).graph
    assert _rel_l2(g, build(g), 12) <= 1e-5
