"""How many bytes a training run will allocate, estimated from the compiled graph alone.

Why: a net too large for memory used to die inside NumPy (MemoryError, or the kernel's OOM
killer) with nothing located or explained. :func:`estimate_run_bytes` counts, before anything
is allocated, what the run will hold at its peak:

* parameters and buffers (every ``ParamSpec``);
* optimizer state: SGD keeps one scratch array per parameter plus a momentum buffer when
  momentum > 0; Adam keeps m, v and a scratch array; weight decay adds one more scratch array;
* one training step: the memory planner's peak (:mod:`netdsl.runtime.memory`: activations and caches
  kept for backward, workspaces, parameter gradients) for the batch size, under the same
  training passes the executor will run;
* the dataset once it is loaded and fitted to the input shape (float32 images, int64 labels).

Arrays NumPy makes outside the planner's model (the optimizer's temporaries, the progress bar)
are not counted, so a refusal is certain to be right; a run that passes can still be tight.
:func:`check_fits` turns the estimate into a NetdslError with the computed size and the
available memory.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..core.errors import NetdslError
from ..core.graph import nodes, records


def _tensor_elements(g) -> tuple[int, int]:
    """(all parameter and buffer elements, trainable elements)."""
    total = trainable = 0
    for rec in nodes(g):
        for spec in (rec.param_specs or {}).values():
            n = math.prod(int(d) for d in spec.shape)
            total += n
            trainable += n if spec.trainable else 0
    return total, trainable


def optimizer_copies(optimizer: str, momentum: float, weight_decay: float) -> int:
    """Arrays the optimizer keeps per trainable parameter (state and scratch)."""
    copies = 3 if optimizer == "adam" else 1 + (1 if momentum else 0)
    return copies + (1 if weight_decay else 0)


def training_step_bytes(g, batch_size: int, *, passes=None, dtype=np.float32,
                        kernels: str = "auto") -> int:
    """The memory planner's peak for one training step of ``g`` (parameter gradients
    included, parameters excluded), with no weight allocated: the training passes run on
    placeholder (broadcast zero) weights, as :func:`netdsl.runtime.memory.memory_table` does."""
    from ..core.graph import copy_graph
    from .memory import beyond_addressable, plan_memory
    from ..compile.model import BoundModel
    from .plan import build_plan
    if beyond_addressable(g, batch_size, np.dtype(dtype).itemsize):
        # no plan (NumPy cannot describe such a tensor): the outputs alone, a lower bound
        return activation_bytes(g, batch_size, np.dtype(dtype).itemsize)
    zero = np.zeros((), dtype=dtype)
    params = {rec.name: {k: np.broadcast_to(zero, tuple(int(d) for d in ps.shape))
                         for k, ps in rec.param_specs.items()}
              for rec in nodes(g) if rec.param_specs}
    model = BoundModel(copy_graph(g), params, dtype=dtype)
    model.optimize("train", passes)
    return int(plan_memory(build_plan(model.graph, dtype=dtype, kernels=kernels), batch_size,
                           itemsize=np.dtype(dtype).itemsize, training=True).peak)


def estimate_run_bytes(g, *, batch_size: int, optimizer: str = "sgd", momentum: float = 0.9,
                       weight_decay: float = 0.0, passes=None, dtype_bytes: int = 4,
                       dataset_examples: int = 0, input_shape=None,
                       kernels: str = "auto") -> dict:
    """Bytes a training run of ``g`` allocates, by part, and their ``total``.

    ``dataset_examples`` (train + evaluation) and ``input_shape`` size the loaded dataset;
    leave them out to estimate the network alone. Python ints throughout: no overflow however
    large the net.
    """
    total_elems, trainable = _tensor_elements(g)
    records = list(nodes(g))
    if input_shape is None:
        input_shape = next((rec.out_shape for rec in records if not rec.inputs), ()) or ()
    example = math.prod(int(d) for d in input_shape) if input_shape else 0
    parts = {
        "parameters": total_elems * dtype_bytes,
        "optimizer_state": trainable * dtype_bytes * optimizer_copies(optimizer, momentum,
                                                                     weight_decay),
        "training_step": training_step_bytes(g, batch_size, passes=passes, kernels=kernels),
        "dataset": dataset_examples * (example * 4 + 8),
    }
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes(g, batch: int, itemsize: int = 4) -> int:
    """Bytes of every layer's outputs for a batch (Python ints: exact however large)."""
    return sum(batch * math.prod(int(d) for d in shape) * itemsize
               for rec in records(g) for shape in (rec.out_shapes or ()))


def check_allocatable(g, *, batch: int, what: str, weights: bool = True) -> None:
    """A NetdslError when ``g``'s weights (``weights``: the command makes or loads them) and
    one batch's outputs cannot fit in the memory available: what `run` checks, for the
    commands that allocate otherwise (bench, export, predict, eval, show). Before, a network
    that `check` accepts but no machine holds ended in an internal error."""
    total_elems, _ = _tensor_elements(g)
    parts = {"parameters": total_elems * 4 if weights else 0,
             "activations": activation_bytes(g, batch)}
    parts["total"] = sum(parts.values())
    check_fits(parts, available=available_bytes(), what=what)


def available_bytes() -> int | None:
    """Memory the system can give without swapping: /proc/meminfo's MemAvailable, else the
    free physical pages from sysconf; None when neither is known (the check is then skipped)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; exact for huge values (no float overflow)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for i, unit in enumerate(units):
        if n < 1024 ** (i + 1):
            return f"{n / 1024 ** i:.1f} {unit}" if i else f"{n} B"
    return f"{n // 1024 ** 6:,} EiB"     # integer division: n / … overflows a float past 1e308


def check_fits(estimate: dict, *, available: int | None, what: str = "this run") -> None:
    """Raise NetdslError when ``estimate['total']`` exceeds ``available`` bytes (from
    :func:`device_available_bytes`); None, memory unknown, skips the check."""
    if available is None or estimate["total"] <= available:
        return
    shown = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in estimate.items()
                      if k != "total" and v)
    raise NetdslError(
        f"{what} needs at least {format_bytes(estimate['total'])} of memory, but only "
        f"{format_bytes(available)} is available",
        detail=f"{estimate['total']:,} bytes = {shown}",
        hint="use a smaller --batch-size, a smaller INPUT or narrower layers")


def device_available_bytes(xp) -> int | None:
    """Free memory where the network's arrays live: the GPU's for CuPy, else the host's."""
    if getattr(xp, "__name__", "") == "cupy":
        try:
            return int(xp.cuda.runtime.memGetInfo()[0])
        except Exception:   # a driver that cannot answer: skip the check rather than fail
            return None
    return available_bytes()
