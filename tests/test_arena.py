"""The memory planner's arena (netdsl/runtime/arena.py): every layout is valid (buffers alive
at the same step never share a byte), never below the most bytes alive at once, and the
linear-time layout that large plans get stays close to the exact one."""
from __future__ import annotations

import numpy as np
import pytest

import netdsl.runtime.memory as M
from netdsl.runtime.arena import (EXACT_ARENA_BUFFERS, arena_by_size, arena_by_time,
                                  layout_arena)

from test_zoo_memory import SMALL, _setup


class Lifetimes:
    """What the arena reads of the planner's simulation: size, born, died by buffer; t."""

    def __init__(self, size, born, died, t):
        self.size, self.born, self.died, self.t = size, born, died, t


def _random(n, seed, horizon=None):
    rng = np.random.default_rng(seed)
    horizon = horizon or 2 * n
    born = {b: int(rng.integers(0, horizon)) for b in range(n)}
    died = {b: born[b] + int(rng.integers(0, horizon // 4 + 1)) for b in range(n)
            if rng.random() < 0.9}            # the rest live to the end of the step
    size = {b: int(rng.integers(1, 5000)) for b in range(n)}
    return Lifetimes(size, born, {b: min(d, horizon) for b, d in died.items()}, horizon)


def _check(s, layout):
    """The layout is valid, and its size is at least the most bytes alive at once."""
    top, offsets = layout
    assert set(offsets) == set(s.size)
    life = {b: (s.born[b], s.died.get(b, s.t)) for b in s.size}
    order = sorted(s.size, key=lambda b: life[b][0])
    for i, a in enumerate(order):          # a naive pairwise check, independent of arena.py
        for b in order[i + 1:]:
            if life[b][0] > life[a][1]:
                break
            assert (offsets[a] + s.size[a] <= offsets[b]
                    or offsets[b] + s.size[b] <= offsets[a]), (a, b)
        assert offsets[a] + s.size[a] <= top
    alive = np.zeros(s.t + 2, dtype=np.int64)
    for b in s.size:
        alive[life[b][0]] += s.size[b]
        alive[life[b][1] + 1] -= s.size[b]
    assert top >= int(np.cumsum(alive).max())
    return top


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("arena", [arena_by_size, arena_by_time])
def test_random_lifetimes_get_a_valid_layout(arena, seed):
    _check(_random(400, seed), arena(_random(400, seed)))


def _zoo_simulations():
    sims = []
    real = M.layout_arena

    def capture(s):
        sims.append(s)
        return real(s)
    for name in sorted(SMALL):
        ex, _, _ = _setup(name, "numpy")
        for training in (True, False):
            M.layout_arena = capture
            try:
                M.plan_memory(ex.plan, 8, training=training)
            finally:
                M.layout_arena = real
            yield f"{name}-{'train' if training else 'infer'}", sims.pop()


@pytest.mark.slow   # builds every net of the zoo
def test_the_zoo_layouts_are_valid_and_the_time_sweep_stays_close():
    worst = 0.0
    for name, s in _zoo_simulations():
        assert len(s.size) <= EXACT_ARENA_BUFFERS, name   # the zoo gets the exact layout
        exact = _check(s, arena_by_size(s))
        swept = _check(s, arena_by_time(s))
        worst = max(worst, swept / exact)
    assert worst <= 1.5, worst        # measured 1.39 (deepface-infer) on 2026-12-06


def test_large_plans_are_swept_in_time():
    s = _random(EXACT_ARENA_BUFFERS + 1, 7)
    assert layout_arena(s) == arena_by_time(s)
    small = _random(50, 7)
    assert layout_arena(small) == arena_by_size(small)


def test_a_deep_chain_is_laid_out_like_a_stack():
    """A training step of a chain: each cache lives from its forward step to its backward
    step (nested lifetimes), each output one step. The sweep needs no more than the bytes
    alive at the peak: the exact answer."""
    n = 3000
    size, born, died = {}, {}, {}
    for i in range(n):
        size[2 * i], born[2 * i], died[2 * i] = 64 + i % 7, i, 2 * n - i      # cache
        size[2 * i + 1], born[2 * i + 1], died[2 * i + 1] = 32, i, i + 1      # output
    s = Lifetimes(size, born, died, 2 * n)
    top = _check(s, arena_by_time(s))
    assert top == sum(size[2 * i] for i in range(n)) + 64
