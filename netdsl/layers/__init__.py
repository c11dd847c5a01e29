"""The layer registry. Importing this package registers every built-in layer: each module of
this package is imported, so a new layer is one new module here (docs/architecture.md,
"Adding a layer"), with no list to extend."""
import importlib
import pkgutil

from .base import (AUTO, REQUIRED, Arg, Ctx, LayerSpec, ParamSpec, all_names, all_specs,
                   bind_args, fresh, get, lookup, numel, out_size, register, shape_str)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")   # registers the module's layers

__all__ = ["AUTO", "REQUIRED", "Arg", "Ctx", "LayerSpec", "ParamSpec", "all_names", "all_specs",
           "bind_args", "fresh", "get", "lookup", "numel", "out_size", "register", "shape_str"]
