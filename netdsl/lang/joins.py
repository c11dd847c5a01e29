"""Joins (``concat { a | b }``, ``add``), ``residual { body }`` and the conditional
``residual?(cond) { body }``, and conditions (``?(stride > 1)``). A mixin of
:class:`netdsl.lang.elements.ChainExpander`, which supplies ``chain``, ``resolve``, ``bind``,
``node_name`` and ``_add``."""
from __future__ import annotations

from ..core.errors import NetdslError
from ..core.graph import Node
from ..layers import bind_args, get, lookup
from . import ast
from .scope import Scope, Tensor
from .values import Word, evaluate, shown, unbound_error


class Joins:
    """Expanding joins and conditions (see the module docstring)."""

    @staticmethod
    def condition(expr, env, written: str) -> bool:
        """A condition (``?(stride > 1)``, ``residual?(c == IN.c)``): it must be true or false."""
        value = evaluate(expr, env)
        if isinstance(value, Word):
            raise unbound_error(str(value), value.loc, env)
        if not isinstance(value, bool):
            raise NetdslError(f"the condition of '{written}' must be true or false, got "
                              f"{shown(value)}", expr.loc,
                              hint="compare values to get true or false: stride == 1, c > 64")
        return value

    def join(self, join: ast.Join, el: ast.Element, current, scope: Scope) -> Tensor:
        callee = join.callee
        residual = callee.name.lower() == "residual" and lookup(callee.name) is None
        if not residual:
            target = self.resolve(callee)
            if target.block is not None or not target.spec.multi_input:
                raise NetdslError(f"'{callee.name}' cannot join branches", callee.name_loc,
                                  hint="only layers with several inputs (concat, add) and "
                                       "residual take { branch | branch }")
        if join.cond is not None:
            if current is None:
                raise NetdslError("residual?(...) { body } needs an input to add back",
                                  join.loc, hint="it cannot start a chain")
            if len(join.branches) != 1:
                raise NetdslError("residual?(...) takes one branch, the body", join.loc,
                                  hint="the shortcut is the identity; with your own shortcut "
                                       "write residual { body | shortcut }")
            if not self.condition(join.cond, scope.env, "residual?(...)"):
                # No add: the element is the body alone.
                return self.chain(join.branches[0], current, scope, ref_ok=True)
        outputs = []
        for branch in join.branches:
            first = branch.elements[0]
            if current is None and not isinstance(first.primary, ast.Ref):
                raise NetdslError("a join at the start of a chain needs every branch to start "
                                  "with '@name'", first.loc,
                                  hint="there is no input before the join for this branch to use")
            outputs.append(self.chain(branch, current, scope, ref_ok=True))
        if residual:
            spec, inputs, meta = self._residual(join, current, outputs)
            if join.cond is not None:
                meta = {"residual": "identity"}      # shapes must match: never projected
            attrs = bind_args(spec, [], {})
        else:
            spec, meta, inputs = target.spec, {}, outputs
            low, high = spec.inputs
            if len(outputs) < low or (high is not None and len(outputs) > high):
                wanted = f"{low}" if low == high else (f"at least {low}" if high is None
                                                       else f"{low} to {high}")
                raise NetdslError(f"{spec.name} joins {wanted} branches, got {len(outputs)}",
                                  callee.name_loc)
            attrs = self.bind(spec, callee, target.numbers, scope)
        name = self.node_name(el.label, spec.name, scope, el)
        return self._add(Node(name, spec.name, attrs, inputs, el.loc, scope.frames, meta))

    @staticmethod
    def _residual(join: ast.Join, current, outputs):
        """``residual { body }`` = add(body(x), x);
        ``residual { body | shortcut }`` = add(body(x), shortcut(x))."""
        if join.callee.args:
            raise NetdslError("residual takes no arguments", join.callee.loc)
        if len(outputs) == 1:
            if current is None:
                raise NetdslError("residual { body } needs an input to add back", join.loc,
                                  hint="at the start of a chain write residual { body | shortcut }")
            return get("add"), [outputs[0], current], {"residual": "auto"}
        if len(outputs) == 2:
            return get("add"), outputs, {"residual": "explicit"}
        raise NetdslError(f"residual takes a body and at most one shortcut, got {len(outputs)} "
                          "branches", join.loc, hint="write residual { body } or "
                                                     "residual { body | shortcut }")
