"""Optimizers: SGD (momentum, Nesterov) and Adam, with PyTorch's exact update rules.

Parameters and gradients are nested dicts ``{node_name: {param_name: array}}`` of NumPy or
CuPy arrays. Only parameters with a gradient are updated; buffers such as batch-norm running
statistics have none and are left alone.

Updates happen in place (``p += ...``) because the executor holds references to the parameter
arrays: rebinding ``params[node][name]`` to a new array would silently detach it. Every step
reuses one scratch array per parameter so that a step allocates (almost) nothing.
"""
from __future__ import annotations

import math

import numpy as np

from ..core import workspace
from ..core.backend import to_numpy
from ..core.errors import NetdslError
from ..lang.train_config import TrainConfig


def _xp(a):
    """The array module of ``a``: CuPy for CuPy arrays, NumPy for everything else."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def _param_key(node: str, name: str) -> str:
    return f"{node}/{name}"


def _split_key(key: str) -> tuple[str, str]:
    """``"inc3a/conv1/weight"`` -> ``("inc3a/conv1", "weight")``: node names may hold '/'."""
    node, _, name = key.rpartition("/")
    return node, name


class _Optimizer:
    """Shared bookkeeping: per-parameter state buffers, scratch space and (de)serialisation."""

    kind = ""
    _buffer_names: tuple[str, ...] = ()   # the per-parameter state, e.g. ("m", "v")

    def __init__(self, lr: float):
        if not lr > 0:
            raise NetdslError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        # state[buffer_name][(node, param)] -> array on the parameters' device
        self._state: dict[str, dict[tuple[str, str], object]] = {b: {} for b in self._buffer_names}
        self._scratch: dict[tuple[str, str, int], object] = {}

    # -- helpers for subclasses -------------------------------------------------------------
    def _pairs(self, params, grads):
        """Yield ``(key, param, grad)`` for every parameter that received a gradient."""
        for node, node_grads in grads.items():
            for name, grad in node_grads.items():
                if grad is None:
                    continue
                yield (node, name), params[node][name], grad

    def _scratch_for(self, key, p, slot: int = 0):
        """A reusable array shaped like ``p`` (contents undefined)."""
        buf = self._scratch.get((*key, slot))
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or _xp(buf) is not _xp(p):
            buf = _xp(p).empty_like(p)
            self._scratch[(*key, slot)] = buf
        return buf

    def _buffer(self, buffer_name: str, key, p):
        """The state buffer for ``key``, moved to ``p``'s device (after a load), or None."""
        buf = self._state[buffer_name].get(key)
        if buf is None:
            return None
        if buf.shape != p.shape:
            raise NetdslError(
                f"optimizer state '{buffer_name}' for parameter {_param_key(*key)} has shape "
                f"{tuple(buf.shape)}, but the parameter has shape {tuple(p.shape)}",
                hint="the checkpoint was saved from a different network")
        xp = _xp(p)
        if _xp(buf) is not xp or buf.dtype != p.dtype:
            buf = xp.asarray(buf, dtype=p.dtype)
            self._state[buffer_name][key] = buf
        return buf

    def _with_weight_decay(self, key, p, g, weight_decay: float):
        """``g + weight_decay * p`` in scratch slot 1 (PyTorch's coupled L2), or ``g`` itself."""
        if not weight_decay:
            return g
        out = self._scratch_for(key, p, slot=1)
        _xp(p).multiply(p, weight_decay, out=out)
        out += g
        return out

    # -- serialisation ----------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """The optimizer state as a flat dict of NumPy arrays and Python scalars.

        Keys are ``"<buffer>/<node>/<param>"`` (e.g. ``"m/inc3a/conv1/weight"``) plus scalars such
        as ``"t"`` and ``"optimizer"`` (the kind, checked on load). Arrays are copies.
        """
        out: dict = {"optimizer": self.kind}
        for buffer_name, buffers in self._state.items():
            for key, buf in buffers.items():
                out[f"{buffer_name}/{_param_key(*key)}"] = np.array(to_numpy(buf), copy=True)
        out.update(self._extra_state())
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore state saved by :meth:`state_dict` (arrays move to the device on next step)."""
        saved_kind = state.get("optimizer", self.kind)
        if isinstance(saved_kind, np.ndarray):
            saved_kind = saved_kind.item()
        if saved_kind != self.kind:
            raise NetdslError(f"the saved optimizer state is for '{saved_kind}', but the "
                              f"optimizer is '{self.kind}'",
                              hint=f"set optimizer = {saved_kind} to resume this run")
        fresh = {b: {} for b in self._buffer_names}
        for flat_key, value in state.items():
            buffer_name, sep, rest = flat_key.partition("/")
            if not sep:
                continue   # a scalar such as "t"
            if buffer_name not in fresh:
                raise NetdslError(f"unexpected entry '{flat_key}' in the saved '{self.kind}' "
                                  f"optimizer state")
            fresh[buffer_name][_split_key(rest)] = np.array(to_numpy(value), copy=True)
        self._state = fresh
        self._scratch.clear()
        self._load_extra_state(state)


class SGD(_Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0).

    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + g`` (``b = g`` on the
    first step) and ``g = b``, or ``g = g + momentum * b`` with Nesterov; then ``p -= lr * g``.
    """

    kind = "sgd"
    _buffer_names = ("momentum_buffer",)

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        if momentum < 0:
            raise NetdslError(f"momentum must not be negative, got {momentum}")
        if weight_decay < 0:
            raise NetdslError(f"weight_decay must not be negative, got {weight_decay}")
        if nesterov and momentum <= 0:
            raise NetdslError("nesterov momentum needs momentum > 0",
                              hint="set momentum (e.g. 0.9) or nesterov = false")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def step(self, params, grads, lr: float | None = None) -> None:
        """Update ``params`` in place from ``grads``; ``lr`` overrides ``self.lr`` for this step."""
        lr = self.lr if lr is None else float(lr)
        mu = self.momentum
        buffers = self._state["momentum_buffer"]
        for key, p, g in self._pairs(params, grads):
            xp = _xp(p)
            d = self._with_weight_decay(key, p, g, self.weight_decay)
            step_buf = self._scratch_for(key, p)
            if not mu:
                blocked(xp, lambda p, d, s: _descend(xp, p, d, s, lr), p, d, step_buf)
                continue
            b = self._buffer("momentum_buffer", key, p)
            first = b is None
            if first:   # b = d
                buffers[key] = b = xp.array(d, dtype=p.dtype, copy=True)

            def update(p, d, b, s):
                if not first:
                    xp.multiply(b, mu, out=b)
                    b += d
                if self.nesterov:
                    # p -= lr * (d + mu * b), as two in-place subtractions (no temporary)
                    _descend(xp, p, d, s, lr)
                    _descend(xp, p, b, s, lr * mu)
                else:
                    _descend(xp, p, b, s, lr)
            blocked(xp, update, p, d, b, step_buf)


def _descend(xp, p, d, scratch, lr: float) -> None:
    """``p -= lr * d`` as PyTorch rounds it (the product, then the sum), via ``scratch``."""
    xp.multiply(d, -lr, out=scratch)
    p += scratch


BLOCK = 1 << 17
"""Elements per block of :func:`blocked` (512 KB of float32 per array; 2^15 and 2^16 were
slower, the Python loop showing; 2^18 the same)."""


def blocked(xp, update, *arrays) -> None:
    """``update(*parts)`` over blocks of :data:`BLOCK` elements of ``arrays`` (all of one
    size), the blocks split over the worker threads (netdsl/core/workspace.py); one call on
    the whole arrays when they fit one block, for CuPy or when one is not contiguous.

    Why: an update is 4–6 element-wise passes over each parameter. On whole arrays each pass
    streams them from memory, on one core; block by block the later passes read from the
    cache, and both cores work: SGD with momentum on 2 threads, alone
    (tests/bench/optim_probe.py) cs231n's 0.9 M parameters 0.79 → 0.61 ms, AlexNet's 61 M
    109 → 47 ms; after a training step's backward, its data coming from memory, cs231n's
    1.61 → 1.38 ms. Each element sees the same operations in the same order either way:
    bitwise the same results."""
    n = arrays[0].size
    if n <= BLOCK or xp is not np or not all(a.flags.c_contiguous for a in arrays):
        update(*arrays)
        return
    flat = [a.reshape(-1) for a in arrays]

    def run(first, last):
        for i in range(first, last):
            update(*(f[i * BLOCK:(i + 1) * BLOCK] for f in flat))
    workspace.split_rows(np, -(-n // BLOCK), sum(f.nbytes for f in flat), run)


class Adam(_Optimizer):
    """Adam as ``torch.optim.Adam`` (not AdamW): L2 weight decay is added to the gradient.

    ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``,
    ``p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.
    """

    kind = "adam"
    _buffer_names = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise NetdslError(f"{label} must be in [0, 1), got {beta}")
        if eps < 0:
            raise NetdslError(f"eps must not be negative, got {eps}")
        if weight_decay < 0:
            raise NetdslError(f"weight_decay must not be negative, got {weight_decay}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0   # steps taken; one global count (every trainable parameter steps together)

    def step(self, params, grads, lr: float | None = None) -> None:
        """Update ``params`` in place from ``grads``; ``lr`` overrides ``self.lr`` for this step."""
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.beta1, self.beta2
        self.t += 1
        bias1 = 1.0 - b1 ** self.t
        bias2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        step_size = lr / bias1
        for key, p, g in self._pairs(params, grads):
            xp = _xp(p)
            g = self._with_weight_decay(key, p, g, self.weight_decay)
            m = self._buffer("m", key, p)
            v = self._buffer("v", key, p)
            if m is None or v is None:
                m = self._state["m"][key] = xp.zeros_like(p)
                v = self._state["v"][key] = xp.zeros_like(p)
            work = self._scratch_for(key, p)
            xp.multiply(m, b1, out=m)
            xp.multiply(g, 1.0 - b1, out=work)
            m += work
            xp.multiply(v, b2, out=v)
            xp.multiply(g, g, out=work)
            work *= 1.0 - b2
            v += work
            # work = sqrt(v) / sqrt(bias2) + eps, then the step -step_size * m / work.
            xp.sqrt(v, out=work)
            work /= bias2_sqrt
            work += self.eps
            xp.divide(m, work, out=work)
            work *= -step_size
            p += work

    def _extra_state(self) -> dict:
        return {"t": self.t}

    def _load_extra_state(self, state: dict) -> None:
        self.t = int(state.get("t", 0))


def make_optimizer(cfg: TrainConfig):
    """The optimizer that ``cfg`` asks for (``cfg.optimizer`` is 'sgd' or 'adam')."""
    if cfg.optimizer == "sgd":
        return SGD(cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return Adam(cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, weight_decay=cfg.weight_decay)
    raise NetdslError(f"unknown optimizer '{cfg.optimizer}'", hint="use sgd or adam")
