"""Expanding chains into nodes: calls, compact names, groups, joins, blocks, repeat/optional.

References are not looked up here (they may point forward); they become
:class:`~netdsl.lang.scope.PendingRef` inputs that :mod:`netdsl.lang.resolve` fills in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..core.errors import NetdslError, did_you_mean
from ..core.graph import Node
from ..layers import LayerSpec, bind_args, lookup
from . import ast
from .blocks import BlockCalls, TensorArg, start_error
from .joins import Joins
from .mistakes import note_calls
from .suggest import suggest_layer
from .scope import Namer, PendingRef, Scope, Tensor
from .values import (FAILED, CascadeError, Word, as_count, cascade, evaluate,
                     number_from_text, shown, unbound_error)

_COMPACT = re.compile(r"([A-Za-z_]+)([0-9]*)((?:-(?:[0-9]+|[A-Za-z_][A-Za-z_0-9]*))*)")
_NUMERIC_KINDS = ("int", "float", "bool", "dims")
MAX_NODES = 100_000
# Repeat iterations and block calls, counted whether or not they add nodes: `[RELU*0]*10**13`
# adds none but would still loop for days.
MAX_STEPS = 5 * MAX_NODES


@dataclass
class Target:
    """What a call's name resolved to: a layer (with compact numbers) or a user block."""

    spec: LayerSpec | None = None
    block: ast.BlockDef | None = None
    numbers: tuple = ()            # compact numbers; a str is a parameter name (CONV3-c)
    base: str = ""                 # the name without compact numbers, as written


class ChainExpander(BlockCalls, Joins):
    """Turns chain statements into :class:`Node` records (inputs may be pending refs)."""

    def __init__(self, params: Mapping, blocks: dict[str, ast.BlockDef], shapes=None,
                 graph_data=dict, graph_name: str = "net", source=None):
        self.params = params
        # What IN needs (netdsl.lang.prefix): the compiler's shape callback, and the graph data
        # (params, train) that shape inference of a prefix reads.
        self.shapes, self.graph_data = shapes, graph_data
        self.graph_name, self.source = graph_name, source
        self.prefix_graph = None       # the shaped part of the network (netdsl.lang.prefix)
        self.prefix_failed: dict = {}  # node name -> the error that stopped its shaping
        self.widths_read: dict = {}    # node name -> (arg, default width, IN's Location)
        self.blocks = blocks                    # lower-case name -> definition
        self.nodes: dict[str, Node] = {}
        self.refs: list[tuple[ast.Ref, Scope]] = []
        self.namer = Namer()
        self.root = Scope(None, "", (), "", params)
        self._active_blocks: list[str] = []
        self.calls: list[tuple] = []     # (block name, call Location) of the blocks being expanded
        self._steps = 0
        self.errors: list[NetdslError] = []   # recovered from: reported together at the end
        self.last_loc = None      # the element expanded last: where a too-deep nesting is reported

    # ---- chains and elements ----------------------------------------------------------------
    def statement(self, chain: ast.Chain) -> Tensor:
        """Expand one chain statement at file level; returns its output."""
        return self.chain(chain, None, self.root, ref_ok=True)

    def chain(self, chain: ast.Chain, current: Tensor | None, scope: Scope, ref_ok: bool):
        """Expand ``chain`` fed by ``current`` (None at the start of a statement)."""
        for i, el in enumerate(chain.elements):
            current = self.element(el, current, scope, ref_ok and i == 0)
        return current

    def element(self, el: ast.Element, current, scope: Scope, ref_ok: bool) -> Tensor:
        self.last_loc = el.loc
        if isinstance(el.primary, ast.Ref):
            return self.reference(el, scope, ref_ok)
        if el.label:
            # Checked before expanding so that the message is about the label, not the node name.
            scope.check_new_label(el.label, el.label_loc)
        out = self.postfixed(el, len(el.postfixes), current, scope)
        if out is None:
            raise start_error(el, vanished=True)
        if el.label:
            scope.define(el.label, out, el.label_loc)
        return out

    def reference(self, el: ast.Element, scope: Scope, ref_ok: bool) -> PendingRef:
        ref = el.primary
        if not ref_ok:
            raise NetdslError(f"@{ref.name} can only start a chain or a branch", ref.loc,
                              hint=f"to combine it with this chain use a join, e.g. "
                                   f"concat {{ @{ref.name} | ... }}")
        if el.postfixes:
            raise NetdslError("a reference cannot be repeated or optional", el.postfixes[0].loc)
        if el.label:
            raise NetdslError("a label cannot name a reference", el.label_loc,
                              hint=f"refer to @{ref.name} directly")
        self.refs.append((ref, scope))
        return PendingRef(len(self.refs) - 1)

    def postfixed(self, el: ast.Element, k: int, current, scope: Scope):
        """The element with its first ``k`` postfixes applied (they apply in written order)."""
        if k == 0:
            return self.primary(el, current, scope)
        post = el.postfixes[k - 1]
        if isinstance(post, ast.Repeat):
            try:
                count = as_count(evaluate(post.count, scope.env), post.count.loc, scope.env)
            except NetdslError as err:   # carry on as if once, to check the body too
                self.record(err)
                count = 1
            if count > MAX_NODES:
                raise NetdslError(f"repeat count {shown(count)} is more than the limit of "
                                  f"{MAX_NODES:,}", post.count.loc,
                                  hint=f"a network has at most {MAX_NODES:,} layers")
            repeat_id = f"repeat@{el.loc.line}:{el.loc.col}"
            nth = sum(isinstance(p, ast.Repeat) for p in el.postfixes[:k - 1])
            repeat_id += f"#{nth + 1}" if nth else ""
            for index in range(1, count + 1):
                self._step(post.loc)
                current = self.postfixed(el, k - 1, current, scope.repeat(repeat_id, index, count))
            return current
        if self.flag_is_on(el, post, scope):
            return self.postfixed(el, k - 1, current, scope)
        return current

    def _step(self, loc) -> None:
        """Count one repeat iteration or block call against MAX_STEPS."""
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise NetdslError(f"the repeats and block calls run more than {MAX_STEPS:,} times",
                              loc, hint="check the repeat counts: an element left out with *0 "
                                        "or a false flag still counts each time it is repeated")

    def flag_is_on(self, el: ast.Element, post: ast.Optional, scope: Scope) -> bool:
        """The boolean parameter that switches ``X?`` / ``X?(FLAG)``, or the value of the
        condition ``X?(cond)``."""
        if post.cond is not None:
            return self.condition(post.cond, scope.env, "?(...)")
        if post.flag:
            name, loc = post.flag, post.flag_loc
            written = f"?({name})"
        elif isinstance(el.primary, ast.Group):
            raise NetdslError("an optional group needs a flag", post.loc,
                              hint="write [ ... ]?(FLAG) with a boolean parameter FLAG")
        else:
            callee = el.primary.callee if isinstance(el.primary, ast.Join) else el.primary
            base = callee.name if isinstance(el.primary, ast.Join) else self.resolve(callee).base
            name, loc, written = base.upper(), el.loc, f"{callee.name}?"
        if name not in scope.env and name.lower() in ("true", "false"):
            return name.lower() == "true"
        if name not in scope.env:
            raise NetdslError(f"'{written}' needs a boolean parameter '{name}'", loc,
                              hint=f"add 'param {name} = true' (or --set {name}=true)")
        value = scope.env[name]
        if value is FAILED:
            raise cascade(name)
        if not isinstance(value, bool):
            raise NetdslError(f"parameter '{name}' switches '{written}' and must be true or "
                              f"false, got {value!r}", loc)
        return value

    def primary(self, el: ast.Element, current, scope: Scope) -> Tensor | None:
        p = el.primary
        if isinstance(p, ast.Group):
            return self.chain(p.chain, current, scope, ref_ok=False)
        if isinstance(p, ast.Join):
            return self.join(p, el, current, scope)
        return self.call(p, el, current, scope)

    # ---- names ----------------------------------------------------------------------------
    def resolve(self, call: ast.Call) -> Target:
        """Layer (any case, aliases), then block, then a compact split such as POOL2 or FC-10."""
        spec = lookup(call.name) if not call.compact else None
        if spec is not None:
            return Target(spec=spec, base=call.name)
        if not call.compact and call.name.lower() in self.blocks:
            return Target(block=self.blocks[call.name.lower()], base=call.name)
        match = _COMPACT.fullmatch(call.name)
        if match:
            letters, digits, groups = match.groups()
            numbers = tuple(number_from_text(g, call.name_loc) if g.isdigit() else g
                            for g in groups.split("-")[1:])
            if digits and groups and lookup(letters + digits):
                return Target(spec=lookup(letters + digits), numbers=numbers, base=letters + digits)
            # POOL2 is compact only for layers that have a compact form; INPUT2 is a typo.
            if lookup(letters) and (groups or (digits and lookup(letters).compact)):
                numbers = ((number_from_text(digits, call.name_loc),) if digits else ()) + numbers
                return Target(spec=lookup(letters), numbers=numbers, base=letters)
            word = letters
        else:
            word = call.name
        raise NetdslError(f"unknown layer or block '{call.name}'", call.name_loc,
                          hint=suggest_layer(word, [b.name for b in self.blocks.values()]) or
                          "see `netdsl layers` for the layers, or define it with 'block'")

    def node_name(self, label: str | None, base: str, scope: Scope, el: ast.Element) -> str:
        if label:
            return self.namer.claim(scope.prefix + label + scope.suffix, el.label_loc)
        return self.namer.auto(scope.prefix, base, el.loc)

    # ---- layer calls ----------------------------------------------------------------------
    def placeholder(self, err: NetdslError, el: ast.Element, current, scope: Scope) -> Tensor:
        """Record an error that does not stop the expansion (an unknown name, a bad argument)
        and stand in an identity for the element, so that the rest of the file is still
        checked and all its independent errors are reported at once."""
        self.record(err)
        name = self.node_name(el.label, "error", scope, el)
        inputs = [current] if current is not None else []
        return self._add(Node(name, "identity", {}, inputs, el.loc, scope.frames,
                              {"placeholder": True}))

    def record(self, err: NetdslError) -> None:
        """Keep an error to report with the others, with the block calls it was found under."""
        if not isinstance(err, CascadeError):
            self.errors.append(note_calls(err, self.calls))

    def call(self, call: ast.Call, el: ast.Element, current, scope: Scope) -> Tensor:
        try:
            target = self.resolve(call)
        except NetdslError as err:
            return self.placeholder(err, el, current, scope)
        if target.block is not None:
            return self.block_call(target.block, call, el, current, scope)
        spec = target.spec
        if spec.role == "source":
            if current is not None:
                raise NetdslError(f"{call.name} can only start a chain", call.name_loc,
                                  hint=f"start a new chain statement: {call.name} -> ...")
            inputs = []
        else:
            if current is None:
                raise start_error(el)
            if spec.inputs[0] > 1:
                raise NetdslError(f"'{call.name}' joins several inputs", call.name_loc,
                                  hint=f"write {call.name} {{ ... | ... }} with one branch per "
                                       "input")
            inputs = [current]
        try:
            attrs = self.bind(spec, call, target.numbers, scope)
        except NetdslError as err:
            return self.placeholder(err, el, current, scope)
        name = self.node_name(el.label, spec.name, scope, el)
        return self._add(Node(name, spec.name, attrs, inputs, el.loc, scope.frames))

    def _add(self, node: Node) -> tuple:
        # Repeats multiply: *1000 inside *1000 would otherwise run out of memory, silently.
        if len(self.nodes) >= MAX_NODES:
            raise NetdslError(f"the network has more than {MAX_NODES:,} layers", node.loc,
                              hint="check the repeat counts")
        self.nodes[node.name] = node
        return (node.name, 0)

    def evaluate_args(self, args: list[ast.CallArg], scope: Scope, what: str, *,
                      exact: bool = False):
        """Positional and keyword values of a call. Keywords name layer arguments in any case,
        but block parameters exactly (``exact``), as parameter names are case-sensitive."""
        positional, keyword = [], {}
        fold = (lambda k: k) if exact else str.lower
        for arg in args:
            value = (TensorArg(arg.value, scope) if isinstance(arg.value, ast.Ref)
                     else evaluate(arg.value, scope.env))
            if arg.key is None:
                if keyword:
                    raise NetdslError("a positional argument cannot follow a keyword argument",
                                      arg.loc)
                positional.append(value)
            elif fold(arg.key) in (fold(k) for k in keyword):
                raise NetdslError(f"{what}: argument '{arg.key}' given twice", arg.loc)
            else:
                keyword[arg.key] = value
        return positional, keyword

    def bind(self, spec: LayerSpec, call: ast.Call, numbers: tuple, scope: Scope) -> dict:
        """Validated attrs for a layer call; errors located at the argument at fault."""
        positional, keyword = self.evaluate_args(call.args, scope, spec.name)
        for arg in call.args:
            if isinstance(arg.value, ast.Ref):
                raise NetdslError(f"{spec.name} takes no tensor argument '@{arg.value.name}'",
                                  arg.loc, hint=f"join tensors with concat {{ @{arg.value.name}"
                                  " | ... }; only a block parameter declared as @name takes one")
        # CONV3-c: a compact group that is a name reads a (block) parameter.
        numbers = tuple(self._compact_value(n, call, scope) for n in numbers)
        if numbers:
            if len(numbers) > len(spec.compact):
                fills = ", ".join(spec.compact) or "nothing"
                raise NetdslError(f"'{call.name}' has {len(numbers)} compact number"
                                  f"{'s' * (len(numbers) > 1)} but {spec.name} takes at most "
                                  f"{len(spec.compact)} ({fills})", call.name_loc)
            for key, number in zip(spec.compact, numbers):
                if key in (k.lower() for k in keyword):
                    raise NetdslError(f"argument '{key}' is given by the name {call.name} and "
                                      f"again as an argument", call.loc)
                keyword[key] = number
        args_by_name = {a.name: a for a in spec.args}
        given = list(zip(spec.args, positional)) + [(args_by_name.get(k.lower()), v)
                                                     for k, v in keyword.items()]
        for arg, value in given:
            # A bare word where a number belongs is almost always an undeclared parameter;
            # so is an upper-case word (N, WIDTH) that is not one of the argument's choices.
            if isinstance(value, Word) and arg is not None and (
                    arg.kind in _NUMERIC_KINDS or (arg.kind == "pair" and not arg.choices)
                    or (value.isupper() and value.lower() not in arg.choices)):
                raise unbound_error(str(value), value.loc, scope.env)
        try:
            return bind_args(spec, positional, keyword)
        except NetdslError as exc:
            raise NetdslError(exc.message, self._arg_loc(exc.message, call, spec),
                              detail=exc.detail,
                              hint=exc.hint or self._choice_hint(exc.message, spec)) from None

    @staticmethod
    def _compact_value(number, call: ast.Call, scope: Scope):
        if not isinstance(number, str):
            return number
        if number not in scope.env:
            raise unbound_error(number, call.name_loc, scope.env)
        if scope.env[number] is FAILED:
            raise cascade(number)
        return scope.env[number]

    @staticmethod
    def _choice_hint(message: str, spec: LayerSpec) -> str | None:
        """For `pad=smae`: bind_args says 'a number or HxW'; also name the words it accepts."""
        match = re.search(r"argument '(\w+)' .*got '([^']*)'", message)
        arg = next((a for a in spec.args if match and a.name == match.group(1)), None)
        if arg is None or not arg.choices:
            return None
        words = [str(c) for c in arg.choices]
        listed = "one of" in message
        return did_you_mean(match.group(2), words) or (
            None if listed else f"it also accepts {', '.join(words)}")

    @staticmethod
    def _arg_loc(message: str, call: ast.Call, spec: LayerSpec):
        """The location of the argument a bind_args message is about (else the whole call)."""
        positional = [a for a in call.args if a.key is None]
        if "positional" in message and len(positional) > len(spec.args):
            return positional[len(spec.args)].loc
        match = re.search(r"argument '(\w+)'", message)
        if match:
            name = match.group(1).lower()
            for arg in call.args:
                if arg.key is not None and arg.key.lower() == name:
                    return arg.loc
            names = [a.name for a in spec.args]
            if name in names and names.index(name) < len(positional):
                return positional[names.index(name)].loc
        return call.loc
