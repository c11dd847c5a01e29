"""Block calls: binding a call's arguments to a block's parameters (values and ``@tensor``
parameters) and expanding the block's body as an instance. A mixin of
:class:`netdsl.lang.elements.ChainExpander`, which supplies ``chain``, ``placeholder``,
``evaluate_args``, ``namer``, ``refs`` and ``params``."""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass

from ..core.errors import NetdslError, did_you_mean
from . import ast
from .mistakes import note_calls
from .prefix import prefix_shape
from .scope import PendingRef, Scope, Tensor
from .values import BlockInput, evaluate, shown


@dataclass(frozen=True)
class TensorArg:
    """A call argument written ``@name``: a tensor for a block's ``@param``."""

    ref: ast.Ref
    scope: Scope



def call_text(call: ast.Call) -> str:
    """The call as written in the source (one line), for diagrams; the name when unknown."""
    loc = call.loc
    if loc is None or loc.source is None:
        return call.name
    line = loc.source.line(loc.line)
    text = " ".join(line[loc.col - 1:loc.col - 1 + loc.length].split())
    return text or call.name


def start_error(el: ast.Element, vanished: bool = False) -> NetdslError:
    err = NetdslError("a chain must start at INPUT or @name", el.loc,
                      hint="the first element was left out (*0 or a false flag)" if vanished
                      else "begin with INPUT -> ... or continue from a label with @name -> ...")
    err.chain_start = not vanished      # perhaps a missing '->' (netdsl.lang.mistakes)
    return err


class BlockCalls:
    """Expanding calls of user blocks (see the module docstring)."""

    def block_call(self, block: ast.BlockDef, call: ast.Call, el: ast.Element, current,
                   scope: Scope) -> Tensor:
        if current is None:
            raise start_error(el)
        if block.name.lower() in self._active_blocks:
            raise NetdslError(f"block '{block.name}' uses itself", call.name_loc,
                              hint="blocks cannot be recursive")
        self._step(call.loc)
        # IN: the call's input, shaped on first use (at the call, so errors point there).
        block_in = {"IN": BlockInput(lambda: prefix_shape(self, current, call.loc,
                                                          f"IN in block '{block.name}'"))}
        try:
            values = self.bind_block(block, call, scope, block_in)
        except NetdslError as err:
            return self.placeholder(err, el, current, scope)
        tensors = {k: v for k, v in values.items() if isinstance(v, TensorArg)}
        values = {k: v for k, v in values.items() if k not in tensors}
        if el.label:
            instance = self.namer.claim(scope.prefix + el.label + scope.suffix, el.label_loc)
        else:
            instance = self.namer.auto(scope.prefix, block.name, el.loc)
        inner = scope.block(instance, block.name, ChainMap(values, block_in, self.params),
                            call=call_text(call), called_at=call.loc)
        for name, arg in tensors.items():
            # `@skip` inside the block names the caller's tensor, looked up in the caller's
            # scope once every statement is expanded (it may be a forward reference).
            self.refs.append((arg.ref, arg.scope))
            inner.define(name, PendingRef(len(self.refs) - 1), arg.ref.loc)
        self._active_blocks.append(block.name.lower())
        self.calls.append((block.name, call.loc))
        try:
            return self.chain(block.body, current, inner, ref_ok=True)
        except NetdslError as err:
            raise note_calls(err, self.calls)
        finally:
            self._active_blocks.pop()
            self.calls.pop()

    def bind_block(self, block: ast.BlockDef, call: ast.Call, scope: Scope,
                   block_in: dict | None = None) -> dict:
        """Block parameter values from a call: positional, keyword, then defaults (which may
        read ``IN``, the call's input, from ``block_in``)."""
        signature = f"its signature is {block.signature()}"
        positional, keyword = self.evaluate_args(call.args, scope, block.name, exact=True)
        names = [p.name for p in block.params]
        if len(positional) > len(names):
            extra = [a for a in call.args if a.key is None][len(names)]
            raise NetdslError(f"block '{block.name}' takes {len(names)} argument"
                              f"{'s' * (len(names) != 1)}, got {len(positional)}", extra.loc,
                              hint=signature)
        values = dict(zip(names, positional))
        for key, value in keyword.items():
            arg_loc = next(a.loc for a in call.args if a.key == key)
            if key not in names:
                close = did_you_mean(key, names)
                raise NetdslError(f"block '{block.name}' has no parameter '{key}'", arg_loc,
                                  hint=f"{close} {signature}" if close else signature)
            if key in values:
                raise NetdslError(f"block '{block.name}': argument '{key}' given twice", arg_loc,
                                  hint=signature)
            values[key] = value
        for param in block.params:
            if param.name in values:
                given = values[param.name]
                arg_loc = next((a.loc for a in call.args if a.key == param.name),
                               None) or self._positional_loc(call, names.index(param.name))
                if param.tensor and not isinstance(given, TensorArg):
                    raise NetdslError(f"block '{block.name}': '@{param.name}' takes a tensor, "
                                      f"got {shown(given)}", arg_loc,
                                      hint=f"pass a labelled tensor, e.g. @enc1; {signature}")
                if not param.tensor and isinstance(given, TensorArg):
                    raise NetdslError(f"block '{block.name}': parameter '{param.name}' takes a "
                                      f"value, not the tensor @{given.ref.name}", arg_loc,
                                      hint=f"declare it as @{param.name} to pass a tensor; "
                                           f"{signature}")
                continue
            if param.default is None:
                raise NetdslError(f"block '{block.name}' needs argument '{param.name}'",
                                  call.loc, hint=signature)
            # Defaults may use program parameters and the block's earlier parameters.
            env = ChainMap(values, block_in or {}, self.params)
            for later in block.params[block.params.index(param) + 1:]:
                use = _find_name(param.default, later.name)
                if use is not None and later.name not in env:
                    raise NetdslError(f"the default of '{param.name}' uses '{later.name}', a "
                                      f"later parameter of block '{block.name}'", use.loc,
                                      hint="a default may use only the parameters before it; "
                                           f"{signature}")
            values[param.name] = evaluate(param.default, env)
        return values


    @staticmethod
    def _positional_loc(call: ast.Call, index: int):
        positional = [a for a in call.args if a.key is None]
        return positional[index].loc if index < len(positional) else call.loc


def _find_name(expr: ast.Expr, name: str) -> ast.Name | None:
    """The first use of ``name`` in an expression, or None."""
    if isinstance(expr, ast.Name):
        return expr if expr.id == name else None
    if isinstance(expr, ast.Unary):
        return _find_name(expr.operand, name)
    if isinstance(expr, ast.BinOp):
        return _find_name(expr.left, name) or _find_name(expr.right, name)
    return None
