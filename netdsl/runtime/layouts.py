"""The activation layout decision of an inference plan (issue 14, item 1).

For every oneDNN convolution of the plan the provider asks oneDNN which layouts it wants
for the source and the destination: the primitive made with ``format any`` activations (and
weights), per primitive and on this host (``kernels/onednn/conv.py: wanted_layouts``).
A convolution would run in a layout other than netdsl's NHWC only where that pays after the
reorders into and out of it: a *chain* of layers that all want that layout, reorders at its
ends. A chain of one convolution never pays: measured on every network's first convolution
(1 or 3 input channels, the only convolutions for which oneDNN 3.2 wants another layout, on
AVX-512 and capped to AVX2 alike), the convolution alone in its layout was 0.9–1.6× as fast,
and with its two reorders 1.2–7× slower than in NHWC (tests/bench/layout_probe.py,
docs/performance.md). Every other convolution of the networks in nets/ gets NHWC from
oneDNN itself (its brgconv kernels' layout); forced blocked layouts (nChw16c / nChw8c) run its
older jit kernels, no faster.

So the decision is NHWC throughout and no reorders: the plan runs as built. What oneDNN asked
for is recorded per step (``Step.meta[LAYOUT]``) and summarised by :func:`choose_layouts`,
which `netdsl bench` prints. A chain of two or more convolutions wanting one non-NHWC layout
would be reported as ``chains`` (none occurs in nets/ on the hosts measured); running such a
chain blocked is not implemented.
"""
from __future__ import annotations

from .plan import Step

LAYOUT = "activation_layout"
"""``Step.meta`` key of a oneDNN conv: ``{"wants": (src, dst), "runs": "nhwc"}``, each of
``src``/``dst`` 'nhwc' or 'other' (what oneDNN picked given ``format any``)."""

KEEP = ("relu", "pool", "maxpool", "avgpool", "batchnorm")
"""Layers between two convolutions that oneDNN runs in any layout: a chain passes them."""


def _wants(st: Step, n: int):
    from .kernels.onednn.conv_geometry import wanted_layouts
    from .kernels.onednn.footprint import RESIDUAL, fused_act
    act = fused_act(st) or ("relu" if (st.meta.get(RESIDUAL) or {}).get("relu") else None)
    src, dst, impl = wanted_layouts(st.node.attrs, (n,) + tuple(st.node.in_shapes[0]),
                                    st.node.out_shapes[0][-1], bool(st.node.attrs.get("bias")),
                                    act)
    return ("nhwc" if src else "other", "nhwc" if dst else "other"), impl


def choose_layouts(plan: list[Step], batch: int) -> dict:
    """Ask oneDNN for the layouts of every oneDNN conv of ``plan`` (for a batch of ``batch``),
    record them (``Step.meta[LAYOUT]``) and decide (see the module docstring). Returns
    ``{"convs", "nhwc_wanted", "other_wanted": [names], "chains": [[names]], "runs",
    "reorders"}``."""
    convs = [i for i, st in enumerate(plan) if st.node.op == "conv" and st.provider == "onednn"]
    other, wanted = [], {}
    for i in convs:
        wants, impl = _wants(plan[i], batch)
        wanted[i] = wants
        plan[i].meta[LAYOUT] = {"wants": wants, "impl": impl, "runs": "nhwc"}
        if wants != ("nhwc", "nhwc"):
            other.append(plan[i].node.name)
    return {"convs": len(convs), "nhwc_wanted": len(convs) - len(other),
            "other_wanted": other, "chains": _chains(plan, wanted), "runs": "nhwc",
            "reorders": 0}


def _chains(plan: list[Step], wanted: dict) -> list[list[str]]:
    """Runs of two or more convolutions, each the single reader (through :data:`KEEP` layers)
    of the one before, where the first's output and every later one wants a non-NHWC
    layout throughout: where a blocked chain could pay."""
    readers: dict = {}
    for i, st in enumerate(plan):
        for j, _ in st.inputs:
            readers.setdefault(j, []).append(i)

    def next_conv(i):
        while True:
            r = readers.get(i, [])
            if len(r) != 1:
                return None
            i = r[0]
            if i in wanted:
                return i
            if plan[i].node.op not in KEEP:
                return None
    chains, seen = [], set()
    for i in wanted:
        if i in seen or wanted[i][1] != "other":
            continue
        chain, j = [i], next_conv(i)
        while j is not None and wanted[j] == ("other", "other"):
            chain.append(j)
            seen.add(j)
            j = next_conv(j)
        if len(chain) > 1:
            chains.append([plan[k].node.name for k in chain])
    return chains


def describe(summary: dict) -> str:
    """One line for `netdsl bench`: the decision and why."""
    n, other = summary["convs"], summary["other_wanted"]
    line = (f"layouts: NHWC throughout, {summary['reorders']} reorders; oneDNN's own choice "
            f"(format any) for {summary['nhwc_wanted']} of {n} convs")
    if other:
        line += (f"; {', '.join(other[:3])}{' …' if len(other) > 3 else ''} would want another "
                 f"layout, alone in it (no chain): its reorders cost more than it saves")
    if summary["chains"]:
        line += f"; chains wanting another layout (not run blocked): {summary['chains']}"
    return line
