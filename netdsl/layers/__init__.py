"""The layer registry. Importing this package registers every built-in layer."""
from .base import (AUTO, REQUIRED, Arg, Ctx, LayerSpec, ParamSpec, all_names, all_specs,
                   bind_args, get, lookup, numel, out_size, register, shape_str)
from . import structure, conv, dense, activations, pooling, norm, loss  # noqa: F401  (register)
from . import lrn, local, deconv, unpool, crop  # noqa: F401  (register)

__all__ = ["AUTO", "REQUIRED", "Arg", "Ctx", "LayerSpec", "ParamSpec", "all_names", "all_specs",
           "bind_args", "get", "lookup", "numel", "out_size", "register", "shape_str"]
