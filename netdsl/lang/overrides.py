"""The command line's overrides of a .net file, parsed: ``--input HxWxC`` and ``--set K=V``
(program parameters apart from training settings). Every command that compiles a file reads
them the same way, so they live with the language, not with one command."""
from __future__ import annotations

from ..core.errors import NetdslError
from .train_config import train_keys
from .values import parse_value


def parse_dims(text: str) -> tuple:
    """--input: HxWxC, HxW (one channel: 28x28 is 28×28×1) or one size (a flat input, 784)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1 or max(dims) > 1_000_000:
        raise NetdslError(f"--input expects HxWxC like 32x32x3, HxW like 28x28 (one channel) "
                          f"or a flat size like 784, got '{text}'")
    return dims + (1,) if len(dims) == 2 else dims


def split_sets(pairs: list[str]) -> tuple[dict, dict]:
    """--set K=V values: program parameters, and training settings (keys like lr, epochs)."""
    params, train = {}, {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NetdslError(f"--set expects NAME=VALUE, got '{pair}'", hint="e.g. --set N=3")
        key, value = pair.split("=", 1)
        key = key.strip()
        (train if key in train_keys() else params)[key] = parse_value(value.strip())
    return params, train
