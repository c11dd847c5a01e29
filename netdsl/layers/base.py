"""The layer registry: one :class:`LayerSpec` per layer, read by every other stage.

A layer is described once, here-style, and nowhere else: its arguments (schema with defaults),
its shape rule, its parameters and their initialisation, forward and backward written against
``xp`` (numpy or cupy), its MAC count, how the diagram draws it, a one-line doc and an example
that the generic tests use. The parser, shape inference, executor, summary, drawer and docs all
look layers up with :func:`get`.

Conventions every entry follows
-------------------------------
* Tensors are **NHWC** (batch, height, width, channels): im2col + one GEMM yields NHWC directly,
  and H×W×C is how the literature writes shapes. Flat tensors are (batch, features).
* Shapes in the graph are *per example*: ``(H, W, C)``, ``(F,)``, or ``()`` for a scalar loss.
* ``forward(ctx, attrs, params, inputs) -> (out, cache)``; ``out`` is one array, or a tuple of
  arrays when the spec has several outputs (e.g. a pool that also returns its switches).
* ``backward(ctx, attrs, params, cache, dout) -> (dinputs, dparams)``; ``dout`` mirrors ``out``
  (for several outputs a tuple whose entries are None where that output got no gradient);
  ``dinputs`` is a list with one gradient (or None) per input; ``dparams`` maps trainable
  parameter names to gradients.
* ``footprint(step, n, it, training, scratch) -> Footprint`` says what one call of the kernels
  allocates, for the memory planner (layers/footprint.py); ``fused`` offers the layer and a
  following activation as one kernel (conv + ReLU), which the plan uses for the NumPy provider.
* Buffers (e.g. batch-norm running statistics) are parameters with ``trainable=False``: the
  executor hands them to ``forward`` in ``params``, forward may update them in place, the
  optimizer skips them and the summary does not count them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import NetdslError, ShapeError, did_you_mean


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Sentinel("REQUIRED")
"""Default of an argument the user must give."""
AUTO = _Sentinel("AUTO")
"""Default of an argument that a compiler stage fills in (conv filters by the width rule, the
last FC's units from the dataset's classes, INPUT's shape from the dataset)."""


@dataclass(frozen=True)
class Arg:
    """One layer argument. ``kind`` is one of int, float, bool, str, pair (an int or an HxW pair,
    stored as a (h, w) tuple), dims (an HxWxC triple, stored as a tuple)."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple = ()
    minimum: float | None = None


@dataclass(frozen=True)
class ParamSpec:
    """A parameter tensor a layer owns: shape, initialiser name, fans for scaled initialisers."""

    shape: tuple
    init: str  # 'zeros' | 'ones' | 'he' | 'glorot' | 'lecun'
    fan_in: int = 1
    fan_out: int = 1
    trainable: bool = True


@dataclass(frozen=True)
class Ctx:
    """What a forward/backward call may need besides its inputs."""

    xp: Any                      # numpy or cupy module
    training: bool = False
    rng: Any = None              # an xp random Generator (dropout masks)
    labels: Any = None           # int class labels of the batch (losses read them)
    dtype: Any = None
    input_grad: bool = True      # False: no one needs d(input); a layer may return [None]
    scratch: Any = None          # a workspace.Scratch for temporaries, or None: fresh arrays
    sync: Any = None             # sync_bn: batch sums over data-parallel ranks (train/parallel.py)
    arena: Any = None            # the executor's planned buffers for this call (fresh()), or None
    # backward may write into the step's own forward output (the executor's say: no one
    # reads it after that step's backward, as no one but the caller reads the prediction)
    overwrite_output: bool = False


def temp(ctx: Ctx, shape, dtype, zero: bool = False):
    """A temporary array for the current kernel call: from ``ctx.scratch`` when the executor
    gave one (never return, cache or store it), else a fresh array."""
    if ctx.scratch is not None:
        return ctx.scratch.take(shape, dtype, zero)
    return ctx.xp.zeros(shape, dtype) if zero else ctx.xp.empty(shape, dtype)


def fresh(ctx: Ctx, shape, dtype, role: str = "out"):
    """A new array that the call hands back: its output (``role`` "out") or the gradient of
    input k ("dx0", "dx1", ...). From the executor's arena when the memory planner placed a
    buffer of exactly this many bytes for this step and role (runtime/carve.py), else a
    fresh uninitialised array. The kernel must write every element, and must ask at most
    once per role per call (a second ask gets a fresh array)."""
    if ctx.arena is not None:
        arr = ctx.arena.take(role, shape, dtype)
        if arr is not None:
            return arr
    return ctx.xp.empty(shape, dtype)


def _no_params(attrs, in_shapes):
    return {}


def _no_macs(attrs, in_shapes, out_shapes):
    return 0


@dataclass(frozen=True)
class LayerSpec:
    """Everything netdsl knows about one layer. See the module docstring for the conventions."""

    name: str                                   # canonical lower-case name, e.g. "conv"
    doc: str                                    # one line, shown by docs and `netdsl layers`
    args: tuple[Arg, ...]
    infer_shape: Callable                       # (attrs, in_shapes) -> out shape | tuple of shapes
    forward: Callable
    backward: Callable
    params: Callable = _no_params               # (attrs, in_shapes) -> {name: ParamSpec}
    macs: Callable = _no_macs                   # (attrs, in_shapes, out_shapes) -> int
    aliases: tuple[str, ...] = ()               # other accepted names, e.g. "conv2d"
    inputs: tuple[int, int | None] = (1, 1)     # (min, max) number of inputs; None = unbounded
    outputs: int = 1                            # > 1: several outputs (a tuple); see below
    outputs_arg: str = ""                       # the argument giving their number (split's
    #                                             parts), when it is not ``outputs`` itself
    compact: tuple[str, ...] = ()               # args filled by compact notation CONV3-64
    label: tuple[str, ...] = ()                 # args shown in diagram labels
    style: dict = field(default_factory=dict)   # graphviz node attributes
    example: dict = field(default_factory=dict) # {"attrs": {...}, "in_shapes": [...]} for tests
    role: str = "layer"                         # layer | source | join | loss
    downsamples: bool = False                   # counts as a pooling step for the width rule
    train_only: bool = False                    # an identity at inference (dropout)
    resolve: Callable | None = None             # (attrs, info) -> attrs, fills AUTO args
    output_names: tuple[str, ...] = ()          # names of the outputs, e.g. ("out", "switches")
    examples: tuple[dict, ...] = ()             # more examples (same form as ``example``)
    random_example: Callable | None = None      # (rng) -> a random valid example, for tests
    reference: Callable | None = None           # (attrs, params, inputs) -> out: naive loops
    make_inputs: Callable | None = None         # (rng, attrs, in_shapes, batch) -> valid inputs
    make_labels: Callable | None = None         # (rng, in_shapes, batch) -> a loss's labels
    #                                             (float targets), when not class indices
    footprint: Callable | None = None           # (step, n, itemsize, training, scratch) ->
    #                                             Footprint: what the kernel allocates (footprint.py)
    fused: dict = field(default_factory=dict)   # activation -> (forward, backward) of the layer
    #                                             and that activation in one reference kernel
    commutes_with_max: bool = False             # f(max(x)) = max(f(x)), gradients too (relu):
    #                                             max pooling may run first (max_pool_first)
    inplace: Callable | None = None             # (xp, x) -> None: an element-wise activation
    #                                             applied to x in place, for one whose backward
    #                                             reads only its output (its cache): a producer
    #                                             may then apply it to its own fresh output
    #                                             (compile/passes.py fuse_activations)

    def all_examples(self) -> tuple[dict, ...]:
        """``example`` followed by ``examples``: what the generic tests run."""
        return (self.example,) + tuple(self.examples) if self.example else tuple(self.examples)

    def output_count(self, attrs: dict) -> int:
        """How many outputs a node of this layer with ``attrs`` has: ``outputs``, or the value
        of ``outputs_arg`` (split(parts=3) has 3)."""
        if self.outputs_arg and isinstance(attrs.get(self.outputs_arg), int):
            return attrs[self.outputs_arg]
        return self.outputs

    @property
    def multi_input(self) -> bool:
        return self.inputs[1] is None or self.inputs[1] > 1

    def input_count_problem(self, n: int) -> str | None:
        """Why ``n`` inputs are wrong for this layer ('conv takes 1 input, got 2'), or None.
        One wording for the shape stage's user error and the verifier's invariant."""
        lo, hi = self.inputs
        if lo <= n and (hi is None or n <= hi):
            return None
        want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        return f"{self.name} takes {want} input{'s' if want != '1' else ''}, got {n}"


_REGISTRY: dict[str, LayerSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: LayerSpec) -> LayerSpec:
    """Add a layer to the registry. Names and aliases are case-insensitive and must be unique."""
    for key in (spec.name, *spec.aliases):
        key = key.lower()
        if key in _ALIASES:
            raise ValueError(f"layer name {key!r} registered twice")
        _ALIASES[key] = spec.name
    _REGISTRY[spec.name] = spec
    return spec


def lookup(name: str) -> LayerSpec | None:
    """The spec registered under ``name`` or one of its aliases (any case), or None."""
    canonical = _ALIASES.get(name.lower())
    return _REGISTRY[canonical] if canonical else None


def get(name: str) -> LayerSpec:
    """The spec for ``name``; a NetdslError with a did-you-mean hint when there is none."""
    spec = lookup(name)
    if spec is None:
        raise NetdslError(f"unknown layer '{name}'", hint=did_you_mean(name, all_names()))
    return spec


def all_specs() -> list[LayerSpec]:
    return [ _REGISTRY[k] for k in sorted(_REGISTRY) ]


def all_names() -> list[str]:
    """Every accepted layer name and alias, lower case."""
    return sorted(_ALIASES)


# ---------------------------------------------------------------------------------------------
# Argument binding: the parser hands positional and keyword values, we return validated attrs.

def _coerce(spec: LayerSpec, arg: Arg, value):
    where = f"{spec.name}: argument '{arg.name}'"
    if value is AUTO:
        return value
    kind = arg.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise NetdslError(f"{where} must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise NetdslError(f"{where} must be a whole number, got {value!r}")
        value = int(value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NetdslError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind == "pair":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) == value:
            value = (int(value), int(value))
        elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
            value = tuple(value)
        elif arg.choices and isinstance(value, str) and value.lower() in arg.choices:
            return value.lower()
        else:
            raise NetdslError(f"{where} must be a number or HxW, got {value!r}")
        if arg.minimum is not None and min(value) < arg.minimum:
            raise NetdslError(f"{where} must be at least {arg.minimum:g}, got {value!r}")
        return value
    elif kind == "dims":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)        # INPUT(784): a flat input
        if not (isinstance(value, tuple) and all(isinstance(v, int) for v in value)):
            raise NetdslError(f"{where} must be written like 32x32x3, got {value!r}")
        if any(v < 1 for v in value):
            raise NetdslError(f"{where} must have positive sizes, got {value!r}")
        return value
    elif kind == "str":
        if not isinstance(value, str):
            raise NetdslError(f"{where} must be a name, got {value!r}")
        value = value.lower()
    if arg.choices and value not in arg.choices:
        raise NetdslError(f"{where} must be one of {', '.join(map(str, arg.choices))}; got {value!r}",
                          hint=did_you_mean(str(value), [str(c) for c in arg.choices]))
    if arg.minimum is not None and value < arg.minimum:
        raise NetdslError(f"{where} must be at least {arg.minimum:g}, got {value!r}")
    return value


def bind_args(spec: LayerSpec, positional: list, keyword: dict) -> dict:
    """Validate a call's arguments against ``spec.args``; return the full attrs dict.

    Positional values fill arguments in schema order. Raises NetdslError (without a location:
    the caller adds it) for too many positional values, unknown or repeated keywords, missing
    required values and values of the wrong kind.
    """
    names = [a.name for a in spec.args]
    if len(positional) > len(spec.args):
        raise NetdslError(
            f"{spec.name} takes at most {len(spec.args)} positional argument"
            f"{'s' if len(spec.args) != 1 else ''} ({', '.join(names) or 'none'}), "
            f"got {len(positional)}")
    values = dict(zip(names, positional))
    for key, value in keyword.items():
        key_l = key.lower()
        if key_l not in names:
            raise NetdslError(f"{spec.name} has no argument '{key}'",
                              hint=did_you_mean(key, names) or
                              (f"its arguments are: {', '.join(names)}" if names else
                               f"{spec.name} takes no arguments"))
        if key_l in values:
            raise NetdslError(f"{spec.name}: argument '{key_l}' given twice")
        values[key_l] = value
    attrs = {}
    for arg in spec.args:
        if arg.name in values:
            attrs[arg.name] = _coerce(spec, arg, values[arg.name])
        elif arg.default is REQUIRED:
            raise NetdslError(f"{spec.name} needs argument '{arg.name}'"
                              + (f" ({arg.doc})" if arg.doc else ""),
                              hint=f"write it as {spec.name.upper()}({arg.name}=...)")
        else:
            attrs[arg.name] = arg.default
    return attrs


# ---------------------------------------------------------------------------------------------
# Helpers shared by several shape rules.

ROUNDING = ("cover", "exact", "floor", "ceil")
"""How a windowed layer's output size (I − K_eff + 2P)/S + 1 is rounded when it is not whole:
``cover`` (the language's default) floors when the windows still read every real input pixel,
only padding being left over (ResNet's 7×7/2, pad 3 on 224), and refuses when real pixels would
be dropped (AlexNet's 11×11/4 on 224); ``exact`` refuses any remainder (the course notes'
rule), ``floor`` drops the last partial window (PyTorch, Caffe convolution), ``ceil`` keeps it
(Caffe pooling)."""


def _fraction(num: int, den: int) -> str:
    """num/den + 1 as a short decimal: 54.25, 28.5, 7.333."""
    return f"{num / den + 1:.4g}"


def out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
             ceil: bool = False, what: str = "conv", rounding=None) -> int:
    """O = (I − K_eff + 2P)/S + 1, rounded as ``rounding`` says (one of ROUNDING; ``ceil=True``
    means "ceil"; anything else, e.g. an unresolved AUTO, means "floor" as in PyTorch).

    A ShapeError showing the arithmetic when the size is not positive, when it is not whole
    under "exact" rounding, or when "cover" rounding would drop real input pixels; that error
    carries ``rounding_error = (size, k_eff, pad, stride)`` and a hint with the nearest input
    sizes that divide."""
    mode = "ceil" if ceil else (rounding if rounding in ROUNDING else "floor")
    k_eff = dilation * (kernel - 1) + 1
    span = size - k_eff + 2 * pad
    if mode == "cover" and span >= 0 and span % stride:
        # The last window ends at padded position (O−1)·S + K_eff; the real pixels end at P + I.
        dropped = pad + size - ((span // stride) * stride + k_eff)
        if dropped <= 0:
            mode = "floor"            # only padding is left over: nothing real is lost
        else:
            below, above = size - span % stride, size + stride - span % stride
            err = ShapeError(
                f"{what} k={kernel} stride {stride} drops the last {dropped} input "
                f"pixel{'s' * (dropped > 1)} of the {size}-wide input",
                detail=f"({size} − {k_eff} + 2·{pad})/{stride} + 1 = {_fraction(span, stride)}: "
                       f"the last window ends {dropped} pixel{'s' * (dropped > 1)} before "
                       "the input does",
                hint=f"the nearest sizes that fit are {below} and {above}; or pad the input, or "
                     "round: add round=floor (PyTorch) to this layer, or 'param ROUND = floor' "
                     "to the file")
            err.rounding_error = (size, k_eff, pad, stride)
            raise err
    if mode == "exact" and span >= 0 and span % stride:
        below, above = size - span % stride, size + stride - span % stride
        err = ShapeError(
            f"{what} k={kernel} stride {stride} does not fit the {size}-wide input exactly",
            detail=f"({size} − {k_eff} + 2·{pad})/{stride} + 1 = {_fraction(span, stride)}",
            hint=f"the nearest sizes that fit are {below} and {above}; or round: add "
                 f"round=floor (PyTorch) to this layer, or 'param ROUND = floor' to the file")
        err.rounding_error = (size, k_eff, pad, stride)
        raise err
    out = (-(-span // stride) if mode == "ceil" else span // stride) + 1
    if mode == "ceil" and (out - 1) * stride >= size + pad:
        out -= 1  # Caffe/PyTorch rule: the last window must start inside the input or left pad
    if out < 1:
        kdesc = f"k={kernel}" + (f" (dilated to {k_eff})" if dilation > 1 else "")
        raise ShapeError(
            f"{what} {kdesc} on {size}-wide input gives a non-positive size",
            detail=f"({size} − {k_eff} + 2·{pad})/{stride} + 1 = {str(out).replace('-', '−')}",
            hint=f"use a kernel ≤ {size + 2 * pad}, more padding, or a larger input")
    return out


def shape_str(shape) -> str:
    """A per-example shape as the literature writes it: 28×28×6, 120, or scalar."""
    if shape is None:
        return "?"
    if len(shape) == 0:
        return "scalar"
    return "×".join(str(d) for d in shape)


def numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1
