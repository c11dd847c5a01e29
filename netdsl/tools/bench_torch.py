"""The same network in PyTorch, built from netdsl's graph, for `netdsl bench --compare torch`.

Only imported when a comparison is asked for; PyTorch is never a dependency. Each graph node
becomes one module (or a tensor operation for joins, flatten and GAP); the forward pass walks
the nodes in netdsl's topological order. PyTorch runs in its native NCHW layout: the point is
to time PyTorch as its users run it, not to reproduce netdsl's memory layout.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

from ..core import graph as G
from ..core.errors import NetdslError
from ..layers import get
from ..layers.geometry import PAIR_ARGS, conv_padding
from ..layers.pooling import pool_attrs
from ..layers.structure import pair_attrs

MAPPED = ("input", "conv", "pool", "maxpool", "avgpool", "batchnorm", "relu", "tanh", "sigmoid",
          "fc", "flatten", "gap", "dropout", "concat", "add", "identity", "softmax_xent",
          "silu", "relu6", "hswish", "hsigmoid", "mul", "slice", "shuffle", "lrn")


def _module(nn, rec):
    """The torch module for one node, or None for nodes evaluated inline."""
    op, a = rec.op, rec.attrs
    if op == "conv":
        p = pair_attrs(a, PAIR_ARGS)
        return nn.Conv2d(rec.in_shapes[0][-1], p["filters"], p["kernel"], stride=p["stride"],
                         padding=conv_padding(p), dilation=p["dilation"], groups=p["groups"],
                         bias=p["bias"])
    if op in ("pool", "maxpool", "avgpool"):
        p = pool_attrs(a)
        if p["kind"] == "max":
            return nn.MaxPool2d(p["size"], p["stride"], p["pad"], ceil_mode=p["ceil"])
        return nn.AvgPool2d(p["size"], p["stride"], p["pad"], ceil_mode=p["ceil"],
                            count_include_pad=p.get("count_include_pad", True))
    if op == "batchnorm":
        cls = nn.BatchNorm2d if len(rec.in_shapes[0]) == 3 else nn.BatchNorm1d
        return cls(rec.in_shapes[0][-1], eps=a["eps"], momentum=a["momentum"])
    if op == "fc":
        from ..layers.base import numel
        return nn.Linear(numel(rec.in_shapes[0]), a["units"], bias=a["bias"])
    if op == "dropout":
        return nn.Dropout(a["rate"])
    simple = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
              "relu6": nn.ReLU6, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid}
    if op in simple:
        return simple[op]()
    if op == "shuffle":
        return nn.ChannelShuffle(a["groups"])
    if op == "lrn":   # PyTorch divides alpha by the size, as netdsl's alpha_over_n=true does
        alpha = a["alpha"] if a["alpha_over_n"] else a["alpha"] * a["size"]
        return nn.LocalResponseNorm(a["size"], alpha=alpha, beta=a["beta"], k=a["k"])
    return None


def build(g):
    """(torch module computing the summed loss or the main logits, main head name).

    Raises NetdslError naming the first layer this mapping cannot express.
    """
    import torch
    from torch import nn
    order = G.nodes(g)
    for rec in order:
        if rec.op not in MAPPED or get(rec.op).outputs != 1:
            raise NetdslError(f"--compare torch cannot map layer '{rec.op}' ({rec.name})",
                              rec.loc, hint="compare a network made of " + ", ".join(MAPPED))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.order = order
            self.mods = nn.ModuleDict()
            for rec in order:
                mod = _module(nn, rec)
                if mod is not None:
                    self.mods[rec.name.replace("/", "__").replace(".", "_")] = mod
            self.key = {rec.name: rec.name.replace("/", "__").replace(".", "_") for rec in order}
            heads = [r for r in order if r.op == "softmax_xent"]
            self.main = max(heads, key=lambda r: (r.attrs.get("weight", 1.0),
                                                  -order.index(r))).name

        def forward(self, x, labels=None):
            values, total = {}, None
            for rec in self.order:
                ins = [values[s] for s, _ in rec.inputs]
                op = rec.op
                if op == "input":
                    out = x
                elif op == "softmax_xent":
                    if labels is None:
                        continue
                    loss = rec.attrs.get("weight", 1.0) * nn.functional.cross_entropy(ins[0],
                                                                                       labels)
                    total = loss if total is None else total + loss
                    continue
                elif op == "fc" or op == "flatten":
                    flat = ins[0].flatten(1)
                    out = flat if op == "flatten" else self.mods[self.key[rec.name]](flat)
                elif op == "gap":
                    out = ins[0].mean(dim=(2, 3), keepdim=bool(rec.attrs.get("keep")))
                elif op == "mul":   # a flat (N, C) gate broadcasts as N×C×1×1 in NCHW
                    a, b = (t[:, :, None, None] if t.dim() == 2 and o.dim() == 4 else t
                            for t, o in zip(ins, ins[::-1]))
                    out = a * b
                elif op == "slice":
                    out = ins[0][:, rec.attrs["start"]:rec.attrs["stop"]]
                elif op == "concat":
                    out = torch.cat(ins, dim=1)
                elif op == "add":
                    out = ins[0]
                    for other in ins[1:]:
                        out = out + other
                elif op == "identity":
                    out = ins[0]
                else:
                    out = self.mods[self.key[rec.name]](ins[0])
                values[rec.name] = out
            if labels is not None:
                return total
            main = next(r for r in self.order if r.name == self.main)
            return values[main.inputs[0][0]]

    return Net()


def make_step(model, x, y, mode: str, run=None):
    """One timed PyTorch step of ``model`` on (x, y): a training step (SGD with momentum,
    the loss's backward) or an inference batch without gradients. ``run`` calls the model
    (``torch.compile``'s wrapper; the model itself by default)."""
    import torch
    run = model if run is None else run
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            run(x, y).backward()
            opt.step()
        return step
    model.eval()
    # eager: inference_mode, PyTorch's fastest; a compiled graph takes no_grad (its guards
    # reject inference tensors)
    no_grad = torch.inference_mode if run is model else torch.no_grad

    def step():
        with no_grad():
            run(x)
    return step


@contextlib.contextmanager
def quiet_native_stderr():
    """File descriptor 2 pointed at /dev/null for the block: PyTorch's profiler (Kineto)
    prints its stages ('USDT: ... profiler_start') and, on a machine without a GPU,
    'ERROR: ... gpuGetDeviceCount failed' straight from C++, whatever Python's warning filters
    or KINETO_LOG_LEVEL say; none of it concerns a CPU benchmark. Python exceptions still
    propagate; Python warnings raised meanwhile are dropped too (torch's CUDA notices)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(step) -> int:
    """Peak bytes PyTorch's CPU allocator held during one step beyond what it held before
    (the profiler's running 'Total Allocated'; the same definition as netdsl's figure)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        with quiet_native_stderr():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
            prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})]
    return max(totals, default=0)
